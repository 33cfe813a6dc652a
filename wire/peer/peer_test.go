package peer

import (
	"bytes"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	h := Header{Iteration: 7, Attempt: 2, From: 1, Chunk: 3, Offset: 10, Count: 4, N: 96}
	data := bytes.Repeat([]byte{1}, 32)
	b := append(AppendHeader(nil, h), data...)
	got, vals, err := Parse(b, 8, 14)
	if err != nil || got != h || !bytes.Equal(vals, data) {
		t.Fatalf("Parse = %+v %v %v", got, len(vals), err)
	}
	f := func(b []byte, elem int, total uint64) {
		t.Helper()
		if _, _, err := Parse(b, elem, total); err == nil {
			t.Fatalf("Parse accepted %d bytes (elem %d total %d)", len(b), elem, total)
		}
	}
	f(b[:HeaderSize-1], 8, 14)
	f(b[:len(b)-1], 8, 14)
	f(b, 8, 13) // past the end
	f(b, 4, 14) // wrong element size
	h.N = -1
	f(append(AppendHeader(nil, h), data...), 8, 14)
}

func TestSplit(t *testing.T) {
	for _, n := range []int{0, 1, 7, 61684} {
		for parts := 1; parts <= 6; parts++ {
			next := 0
			for i := 0; i < parts; i++ {
				off, l := Split(n, parts, i)
				if off != next || l < n/parts || l > n/parts+1 {
					t.Fatalf("Split(%d,%d,%d) = %d,%d", n, parts, i, off, l)
				}
				next = off + l
			}
			if next != n {
				t.Fatalf("Split(%d,%d) covers %d", n, parts, next)
			}
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(append(AppendHeader(nil, Header{Count: 1}), 0, 0, 0, 0), 4, uint64(1))
	f.Fuzz(func(t *testing.T, b []byte, elem int, total uint64) {
		if elem < 1 || elem > 8 {
			return
		}
		h, data, err := Parse(b, elem, total)
		if err == nil && (h.Offset+h.Count > total || uint64(len(data)) != h.Count*uint64(elem)) {
			t.Fatalf("accepted a bad chunk %+v", h)
		}
	})
}
