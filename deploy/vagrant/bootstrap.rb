# What every machine of the lab must know before any of them boots, made once on the host:
# the cluster CA (kubeadm init uses it instead of making its own) and a bootstrap token.
# With both fixed in advance, a worker joins with `--token` and the CA's public-key hash
# (kubeadm's --discovery-token-ca-cert-hash), and nothing travels from the control plane
# back to the host (an rsync synced folder only copies host -> guest).
#
#   ruby deploy/vagrant/bootstrap.rb DIR   # prints token and hash; makes DIR's files once
require "fileutils"
require "openssl"
require "securerandom"

module XlbBootstrap
  TOKEN_CHARS = ("a".."z").to_a + ("0".."9").to_a

  # kubeadm's bootstrap token format: [a-z0-9]{6}.[a-z0-9]{16}
  def self.new_token
    pick = ->(n) { Array.new(n) { TOKEN_CHARS[SecureRandom.random_number(TOKEN_CHARS.size)] }.join }
    "#{pick.call(6)}.#{pick.call(16)}"
  end

  # A self-signed CA as kubeadm makes one (CN kubernetes, CA:TRUE, keyCertSign), 10 years.
  def self.new_ca
    key = OpenSSL::PKey::RSA.new(2048)
    cert = OpenSSL::X509::Certificate.new
    cert.version = 2
    cert.serial = OpenSSL::BN.rand(63)
    cert.subject = cert.issuer = OpenSSL::X509::Name.parse("/CN=kubernetes")
    cert.public_key = key.public_key
    cert.not_before = Time.now - 60
    cert.not_after = cert.not_before + 10 * 365 * 24 * 3600
    ext = OpenSSL::X509::ExtensionFactory.new(cert, cert)
    cert.add_extension(ext.create_extension("basicConstraints", "CA:TRUE", true))
    cert.add_extension(ext.create_extension("keyUsage", "digitalSignature,keyEncipherment,keyCertSign", true))
    cert.add_extension(ext.create_extension("subjectKeyIdentifier", "hash", false))
    cert.sign(key, OpenSSL::Digest.new("SHA256"))
    [key, cert]
  end

  # kubeadm's CA pin: sha256 over the certificate's DER SubjectPublicKeyInfo.
  def self.ca_hash(cert)
    "sha256:" + OpenSSL::Digest::SHA256.hexdigest(cert.public_key.public_to_der)
  end

  # Makes DIR/{token,ca.crt,ca.key} unless they exist (private: mode 0600 in a 0700 dir);
  # returns {token:, ca_crt:, ca_key:, ca_hash:}.
  def self.ensure(dir)
    FileUtils.mkdir_p(dir, mode: 0o700)
    token_file = File.join(dir, "token")
    crt_file = File.join(dir, "ca.crt")
    key_file = File.join(dir, "ca.key")
    File.write(token_file, new_token + "\n", perm: 0o600) unless File.exist?(token_file)
    unless File.exist?(crt_file) && File.exist?(key_file)
      key, cert = new_ca
      File.write(key_file, key.to_pem, perm: 0o600)
      File.write(crt_file, cert.to_pem, perm: 0o644)
    end
    cert = OpenSSL::X509::Certificate.new(File.read(crt_file))
    { token: File.read(token_file).strip, ca_crt: crt_file, ca_key: key_file, ca_hash: ca_hash(cert) }
  end
end

if $PROGRAM_NAME == __FILE__
  abort "usage: ruby #{$PROGRAM_NAME} DIR" unless ARGV.size == 1
  b = XlbBootstrap.ensure(ARGV[0])
  puts "token #{b[:token]}"
  puts "ca-cert-hash #{b[:ca_hash]}"
end
