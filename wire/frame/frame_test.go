package frame

import (
	"bytes"
	"errors"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	f := func(kind Kind, id uint64, body []byte) {
		t.Helper()
		buf := AppendFrame([]byte("junk"), kind, id, body)[4:]
		got, n, err := Parse(buf, 1<<20)
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		if n != len(buf) || n != Size(len(body)) {
			t.Fatalf("consumed %d of %d bytes, Size says %d", n, len(buf), Size(len(body)))
		}
		if got.Kind != kind || got.ID != id || !bytes.Equal(got.Body, body) {
			t.Fatalf("got %+v, want kind %d id %d body %q", got, kind, id, body)
		}
		for i := 0; i < len(buf); i++ {
			if _, _, err := Parse(buf[:i], 1<<20); !errors.Is(err, ErrIncomplete) {
				t.Fatalf("prefix of %d bytes: want ErrIncomplete, got %v", i, err)
			}
		}
	}
	f(0, 0, nil)
	f(1, 1, []byte("x"))
	f(255, 1<<63+5, bytes.Repeat([]byte{7}, 70000))
}

// TestBuiltInPlace: a frame begun with AppendHeader, its body appended and
// finished with FinishFrame is the frame AppendFrame makes.
func TestBuiltInPlace(t *testing.T) {
	for _, body := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte{9}, 70000)} {
		b := AppendHeader(nil, 7, 42)
		b = append(b, body...)
		FinishFrame(b)
		if want := AppendFrame(nil, 7, 42, body); !bytes.Equal(b, want) {
			t.Fatalf("body of %d bytes: built in place %x..., AppendFrame %x...", len(body), b[:HeaderSize], want[:HeaderSize])
		}
	}
}

func TestLimits(t *testing.T) {
	f := func(header []byte, max int, wantErr bool) {
		t.Helper()
		_, err := Peek(header, max)
		if (err != nil && !errors.Is(err, ErrIncomplete)) != wantErr {
			t.Fatalf("Peek(%x, %d) = %v, want error %v", header, max, err, wantErr)
		}
	}
	f([]byte{0, 0, 0, 9}, 0, false)
	f([]byte{0, 0, 0, 8}, 100, true)               // shorter than a header
	f([]byte{0, 0, 0, 10}, 0, true)                // one byte over a zero limit
	f([]byte{0xff, 0xff, 0xff, 0xff}, 1<<20, true) // 4 GiB announced
	f([]byte{0, 0}, 10, false)                     // incomplete, not an error
}

func TestHello(t *testing.T) {
	if err := CheckHello(AppendHello(nil)); err != nil {
		t.Fatal(err)
	}
	f := func(b []byte) {
		t.Helper()
		if err := CheckHello(b); err == nil || errors.Is(err, ErrIncomplete) {
			t.Fatalf("CheckHello(%q) = %v, want a refusal", b, err)
		}
	}
	f([]byte("GET / HTTP/1.1"))
	f([]byte{'F', 'D', 'C', 'L', 0, 0, 0, 2})
}

func FuzzParse(f *testing.F) {
	f.Add(AppendFrame(nil, 3, 42, []byte("hello")), 64)
	f.Add([]byte{0, 0, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0, 1}, 0)
	f.Fuzz(func(t *testing.T, buf []byte, max int) {
		if max < 0 {
			max = -max
		}
		fr, n, err := Parse(buf, max)
		if err != nil {
			return
		}
		if n > len(buf) || len(fr.Body) > max || n != Size(len(fr.Body)) {
			t.Fatalf("Parse accepted an impossible frame: n=%d len=%d body=%d max=%d", n, len(buf), len(fr.Body), max)
		}
		again := AppendFrame(nil, fr.Kind, fr.ID, fr.Body)
		if !bytes.Equal(again, buf[:n]) {
			t.Fatalf("re-encoding differs")
		}
	})
}
