// Package frame is the framing of fedcluster's cluster TCP links
// (scheduler ⇄ server, server ⇄ server): a versioned hello once per
// connection, then length-prefixed frames whose size is checked against a
// limit before anything is allocated or awaited.
//
//	hello: "FDCL" | version uint32 BE                       (8 bytes)
//	frame: length uint32 BE | kind uint8 | id uint64 BE | body   (length = 9 + len(body))
//
// id pairs a request with its reply; 0 means no reply is expected.
package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the cluster protocol version; peers of another version are
// refused at the hello.
const Version = 1

// HelloSize is the length of the hello.
const HelloSize = 8

// HeaderSize is the bytes before a frame's body.
const HeaderSize = 4 + 1 + 8

var magic = [4]byte{'F', 'D', 'C', 'L'}

// ErrIncomplete says more bytes are needed.
var ErrIncomplete = errors.New("incomplete frame")

// AppendHello appends the hello to dst.
func AppendHello(dst []byte) []byte {
	dst = append(dst, magic[:]...)
	return binary.BigEndian.AppendUint32(dst, Version)
}

// CheckHello validates a peer's hello (the first HelloSize bytes it sent).
func CheckHello(b []byte) error {
	if len(b) < HelloSize {
		return ErrIncomplete
	}
	if [4]byte(b[:4]) != magic {
		return fmt.Errorf("cannot accept peer: bad hello %q, not a fedcluster node", b[:4])
	}
	if v := binary.BigEndian.Uint32(b[4:8]); v != Version {
		return fmt.Errorf("cannot accept peer: protocol version %d, want %d", v, Version)
	}
	return nil
}

// Kind tells what a frame's body is.
type Kind uint8

// Frame is one decoded frame. Body aliases the parsed buffer.
type Frame struct {
	Kind Kind
	ID   uint64
	Body []byte
}

// AppendFrame appends a frame to dst.
func AppendFrame(dst []byte, kind Kind, id uint64, body []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(1+8+len(body)))
	dst = append(dst, byte(kind))
	dst = binary.BigEndian.AppendUint64(dst, id)
	return append(dst, body...)
}

// AppendHeader appends the header of a frame whose body the caller appends
// next; FinishFrame then fixes the length. For bodies built in place.
func AppendHeader(dst []byte, kind Kind, id uint64) []byte {
	return AppendFrame(dst, kind, id, nil)
}

// FinishFrame sets the length of the frame that starts at frame[0] and ends
// at the end of frame (begun with AppendHeader).
func FinishFrame(frame []byte) {
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-4))
}

// Size is the encoded size of a frame with a body of n bytes.
func Size(n int) int { return HeaderSize + n }

// Peek reads the header at the start of buf. It returns the total frame
// size, ErrIncomplete when the header is not all there, or an error when
// the announced size is impossible or over max, before any body arrives.
func Peek(buf []byte, max int) (int, error) {
	if len(buf) < 4 {
		return 0, ErrIncomplete
	}
	n := int(binary.BigEndian.Uint32(buf))
	if n < 9 {
		return 0, fmt.Errorf("cannot read frame: length %d is shorter than its header", n)
	}
	if n-9 > max {
		return 0, fmt.Errorf("cannot read frame: body of %d bytes exceeds the limit of %d", n-9, max)
	}
	return 4 + n, nil
}

// Parse decodes one frame from the start of buf and returns it with the
// number of bytes it took. ErrIncomplete means wait for more bytes.
func Parse(buf []byte, max int) (Frame, int, error) {
	size, err := Peek(buf, max)
	if err != nil {
		return Frame{}, 0, err
	}
	if len(buf) < size {
		return Frame{}, 0, ErrIncomplete
	}
	return Frame{
		Kind: Kind(buf[4]),
		ID:   binary.BigEndian.Uint64(buf[5:13]),
		Body: buf[13:size:size],
	}, size, nil
}
