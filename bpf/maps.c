/* The maps alone: what `xlb status` compiles to read the pinned maps with bcc's types. */
#include "lib/headers.h"
#include "lib/maps.h"
