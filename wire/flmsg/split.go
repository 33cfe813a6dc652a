package flmsg

import (
	"encoding/binary"
	"io"

	flatbuffers "github.com/google/flatbuffers/go"
)

// Split messages. A message built with Split set and a Block is only its
// head: every table and string except the model, with its feature_map
// offset pointing past its own end into the block's bytes. Sent as
// head ++ the block's bytes it is an ordinary FlatBuffer (any reader decodes
// it), and the tail, the bulk of the message, is never copied: a server
// keeps one serialized model for every answer that carries it, a load
// generator one update for all its devices.
//
// It works because a FlatBuffer's offsets are relative and point forward,
// and a builder aligns from the end of its buffer: the head ends aligned to
// its own largest alignment (at least 4), the block's bytes need 4 and
// their length is a multiple of 4, so every position keeps its alignment
// when the two are joined.

// Tail is the serialized [FeatureMap] vector with its tables, names and
// data of a block made by Set: what follows a split message's head. It
// must not be modified. A frame's block has no single tail: use Pieces.
func (mb *ModelBlock) Tail() []byte { return mb.tail }

// detached is a feature_map field whose vector lies in a block after the
// message's head.
type detached struct {
	mb *ModelBlock
	at flatbuffers.UOffsetT // the field's offset from the end of the head
}

// add writes the field into the table being built, as a placeholder that
// finish patches once the head's length is known.
func (d *detached) add(b *flatbuffers.Builder, slot int) {
	if d.mb.pieces == nil {
		panic("BUG: ModelBlock used before Set")
	}
	b.PrependUint32Slot(slot, 1, 0)
	d.at = b.Offset()
}

// finish patches the field of a finished head: in head ++ tail the vector
// lies len(tail)-off bytes after the head's end, the field at bytes before
// it.
func (d *detached) finish(head []byte) []byte {
	if d.mb != nil {
		p := len(head) - int(d.at)
		binary.LittleEndian.PutUint32(head[p:], uint32(d.mb.size-int(d.mb.off)+int(d.at)))
	}
	return head
}

// featureMap is how a builder writes a message's feature_map: nothing,
// a model, a spliced block or a detached one.
type featureMap struct {
	off flatbuffers.UOffsetT
	det detached
}

// begin writes what must come first in the builder (a spliced block ends
// the buffer, so it goes in before anything else).
func (f *featureMap) begin(b *flatbuffers.Builder, block *ModelBlock, split bool, write func() flatbuffers.UOffsetT) {
	switch {
	case block != nil && split:
		f.det.mb = block
	case block != nil:
		f.off = block.splice(b)
	default:
		f.off = write()
	}
}

// add writes the field into the table being built.
func (f *featureMap) add(b *flatbuffers.Builder, slot int) {
	switch {
	case f.off != 0:
		b.PrependUOffsetTSlot(slot, f.off, 0)
	case f.det.mb != nil:
		f.det.add(b, slot)
	}
}

// finish returns the finished bytes of b, patched for a detached block.
func (f *featureMap) finish(b *flatbuffers.Builder) []byte {
	return f.det.finish(b.FinishedBytes())
}

// Joined reads a split message: its head, then its block's pieces, without
// joining them. WriteTo (what fasthttp uses to send a body stream) writes
// each whole.
type Joined struct {
	Head []byte
	Tail [][]byte // not modified: reading advances next and at instead
	next int      // the piece of Tail being read
	at   int      // bytes of Tail[next] already read
}

// Len is what is left of the message.
func (j *Joined) Len() int {
	n := len(j.Head)
	for _, p := range j.Tail[j.next:] {
		n += len(p)
	}
	return n - j.at // at bytes of Tail[next] are already read
}

// WriteTo writes what is left of the message to w.
func (j *Joined) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if len(j.Head) > 0 {
		n, err := w.Write(j.Head)
		total += int64(n)
		j.Head = j.Head[n:]
		if err != nil {
			return total, err
		}
	}
	for ; j.next < len(j.Tail); j.next, j.at = j.next+1, 0 {
		n, err := w.Write(j.Tail[j.next][j.at:])
		total += int64(n)
		j.at += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// Read reads the message.
func (j *Joined) Read(p []byte) (int, error) {
	n := copy(p, j.Head)
	j.Head = j.Head[n:]
	for n < len(p) && j.next < len(j.Tail) {
		m := copy(p[n:], j.Tail[j.next][j.at:])
		n += m
		if j.at += m; j.at == len(j.Tail[j.next]) {
			j.next, j.at = j.next+1, 0
		}
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}
