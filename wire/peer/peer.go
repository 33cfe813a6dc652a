// Package peer encodes the binary bodies servers exchange in the
// all-reduce: a fixed header naming the iteration, the attempt, the sender
// and the chunk, followed by the chunk's values. Partial sums travel as
// little-endian float64 (the accumulators' precision), reduced chunks as
// little-endian float32 (the model's), both in pieces (Offset and Count
// name the piece's elements); an acknowledgement is a header alone.
package peer

import (
	"encoding/binary"
	"fmt"
	"math"
)

// HeaderSize is the encoded size of a Header.
const HeaderSize = 8 + 4 + 4 + 4 + 8 + 8 + 8

// Header describes one chunk.
type Header struct {
	Iteration uint64
	Attempt   uint32
	// From is the sender's index among the participants.
	From uint32
	// Chunk is the chunk's index: participant Chunk owns its reduction.
	Chunk  uint32
	Offset uint64 // first element
	Count  uint64 // elements
	// N is the sender's Σ data_size (partials) or the reduced total (reduced chunks).
	N float64
}

// AppendHeader appends h to dst.
func AppendHeader(dst []byte, h Header) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, h.Iteration)
	dst = binary.LittleEndian.AppendUint32(dst, h.Attempt)
	dst = binary.LittleEndian.AppendUint32(dst, h.From)
	dst = binary.LittleEndian.AppendUint32(dst, h.Chunk)
	dst = binary.LittleEndian.AppendUint64(dst, h.Offset)
	dst = binary.LittleEndian.AppendUint64(dst, h.Count)
	return binary.LittleEndian.AppendUint64(dst, math.Float64bits(h.N))
}

// Parse splits a body into its header and values, checking that the values
// are exactly Count elements of elemSize bytes and that the chunk lies
// within a vector of total elements.
func Parse(b []byte, elemSize int, total uint64) (Header, []byte, error) {
	if len(b) < HeaderSize {
		return Header{}, nil, fmt.Errorf("cannot parse chunk: %d bytes, shorter than its header", len(b))
	}
	h := Header{
		Iteration: binary.LittleEndian.Uint64(b[0:]),
		Attempt:   binary.LittleEndian.Uint32(b[8:]),
		From:      binary.LittleEndian.Uint32(b[12:]),
		Chunk:     binary.LittleEndian.Uint32(b[16:]),
		Offset:    binary.LittleEndian.Uint64(b[20:]),
		Count:     binary.LittleEndian.Uint64(b[28:]),
		N:         math.Float64frombits(binary.LittleEndian.Uint64(b[36:])),
	}
	data := b[HeaderSize:]
	if h.Offset > total || h.Count > total-h.Offset {
		return Header{}, nil, fmt.Errorf("cannot parse chunk: elements [%d, +%d) outside a vector of %d", h.Offset, h.Count, total)
	}
	if uint64(len(data)) != h.Count*uint64(elemSize) {
		return Header{}, nil, fmt.Errorf("cannot parse chunk: %d bytes of values for %d elements of %d bytes", len(data), h.Count, elemSize)
	}
	if math.IsNaN(h.N) || math.IsInf(h.N, 0) || h.N < 0 {
		return Header{}, nil, fmt.Errorf("cannot parse chunk: invalid data size sum %v", h.N)
	}
	return h, data, nil
}

// Split divides n elements into parts nearly equal contiguous chunks and
// returns chunk i's offset and length.
func Split(n, parts, i int) (off, length int) {
	base, extra := n/parts, n%parts
	off = i*base + min(i, extra)
	length = base
	if i < extra {
		length++
	}
	return off, length
}
