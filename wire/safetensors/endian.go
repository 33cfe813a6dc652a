package safetensors

import "github.com/fedcluster/fedcluster/node/model"

// littleEndian is true on little-endian hosts, where float32 slices are
// written and read as raw memory. Tests flip it to exercise the portable path.
var littleEndian = model.HostLittleEndian
