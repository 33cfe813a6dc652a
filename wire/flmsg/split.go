package flmsg

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strconv"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
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
// each whole. A file block's floats (ModelBlock.Joined) are sent from its
// file with sendfile(2) where the writer can (a socket, through fasthttp's
// writer), so their memory is never read.
type Joined struct {
	Head []byte
	Tail [][]byte // not modified: reading advances next and at instead
	next int      // the piece of Tail being read
	at   int      // bytes of Tail[next] already read

	file     *os.File // see ModelBlock
	fileOffs []int64
	keep     *model.Model // a mapped model: its file stays open while it is reachable
	own      *os.File     // file opened again for this message: its own offset
	ownErr   error
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
	defer j.Close()
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
		n, err := j.writePiece(w)
		total += int64(n)
		j.at += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// writePiece writes what is left of the current piece.
func (j *Joined) writePiece(w io.Writer) (int, error) {
	p := j.Tail[j.next][j.at:]
	rf, ok := w.(io.ReaderFrom)
	if !ok || j.fileOffs == nil || j.fileOffs[j.next] < 0 {
		return w.Write(p)
	}
	f, err := j.ownFile()
	if err != nil {
		return w.Write(p)
	}
	if _, err := f.Seek(j.fileOffs[j.next]+int64(j.at), io.SeekStart); err != nil {
		return 0, fmt.Errorf("cannot send the model from its file: %w", err)
	}
	n, err := rf.ReadFrom(&io.LimitedReader{R: f, N: int64(len(p))})
	if err == nil && int(n) < len(p) {
		err = fmt.Errorf("cannot send the model from its file: %w", io.ErrUnexpectedEOF)
	}
	return int(n), err
}

// ownFile opens the block's file again, once per message: sendfile(2)
// reads from a file's own offset, which concurrent answers must not share.
// The file may have been renamed or removed since; its /proc/self/fd link
// still opens it.
func (j *Joined) ownFile() (*os.File, error) {
	if j.own == nil && j.ownErr == nil {
		j.own, j.ownErr = os.Open("/proc/self/fd/" + strconv.FormatUint(uint64(j.file.Fd()), 10))
	}
	return j.own, j.ownErr
}

// Close releases the file a message of a file block opened. fasthttp
// calls it once the body is sent or abandoned.
func (j *Joined) Close() error {
	if j.own != nil {
		err := j.own.Close()
		j.own, j.ownErr = nil, os.ErrClosed
		return err
	}
	return nil
}

// Read reads the message.
func (j *Joined) Read(p []byte) (int, error) {
	n := copy(p, j.Head)
	j.Head = j.Head[n:]
	for n < len(p) && j.next < len(j.Tail) {
		src := j.Tail[j.next][j.at:]
		var m int
		if j.fileOffs != nil && j.fileOffs[j.next] >= 0 {
			// From the file, positioned: the mapped memory stays untouched.
			var err error
			m, err = j.file.ReadAt(p[n:min(len(p), n+len(src))], j.fileOffs[j.next]+int64(j.at))
			if err != nil && m < min(len(p)-n, len(src)) {
				return n + m, fmt.Errorf("cannot read the model from its file: %w", err)
			}
		} else {
			m = copy(p[n:], src)
		}
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
