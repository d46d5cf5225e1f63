/* The maps alone: what the loader compiles to learn how this version lays its maps out,
 * when the pinned ones were laid out by another (datapath/migrate.py). */
#include "lib/headers.h"
#include "lib/maps.h"
