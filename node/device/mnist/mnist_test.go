package mnist

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math"
	"slices"
	"sync"
	"testing"
)

func TestEmbeddedFiles(t *testing.T) {
	f := func(name, want string) {
		t.Helper()
		b, err := files.ReadFile("data/" + name)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != want {
			t.Fatalf("%s: sha256 %s, want %s", name, got, want)
		}
	}
	f("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609")
	f("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c")
	f("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6")
	f("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")
}

func TestSets(t *testing.T) {
	// Decode from several goroutines at once: all must get the same Set.
	var wg sync.WaitGroup
	got := make([]*Set, 4)
	for i := range got {
		wg.Go(func() { got[i] = Train() })
	}
	wg.Wait()
	for _, s := range got[1:] {
		if s != got[0] {
			t.Fatal("Train() returned different sets")
		}
	}
	f := func(s *Set, n int, first []int, hist [Classes]int) {
		t.Helper()
		if s.Len() != n || len(s.Pixels) != n*Rows*Cols {
			t.Fatalf("len %d (%d pixels), want %d", s.Len(), len(s.Pixels), n)
		}
		for i, l := range first {
			if s.Label(i) != l {
				t.Fatalf("label %d = %d, want %d", i, s.Label(i), l)
			}
		}
		if h := s.All().Histogram(); h != hist {
			t.Fatalf("histogram %v, want %v", h, hist)
		}
	}
	f(Train(), 60000, []int{5, 0, 4, 1, 9, 2, 1, 3, 1, 4},
		[Classes]int{5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949})
	f(Test(), 10000, []int{7, 2, 1, 0, 4, 1, 4, 9, 5, 9},
		[Classes]int{980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009})
}

func TestInput(t *testing.T) {
	s := Test()
	dst := make([]float32, InputLen+1)
	dst[InputLen] = 42 // canary
	if l := s.Input(0, dst); l != 7 {
		t.Fatalf("label %d", l)
	}
	if dst[InputLen] != 42 {
		t.Fatal("Input wrote past InputLen")
	}
	bg := float32(-Mean / Std)
	if math.Abs(float64(Background-bg)) > 1e-6 {
		t.Fatalf("background %v, want %v", Background, bg)
	}
	var sum float64
	for r := range Side {
		for c := range Side {
			v := dst[r*Side+c]
			if r < 2 || r >= Side-2 || c < 2 || c >= Side-2 {
				if v != Background {
					t.Fatalf("border pixel (%d,%d) = %v", r, c, v)
				}
				continue
			}
			want := (float64(s.Pixels[(r-2)*Cols+c-2])/255 - Mean) / Std
			if math.Abs(float64(v)-want) > 1e-5 {
				t.Fatalf("pixel (%d,%d) = %v, want %v", r, c, v, want)
			}
			sum += float64(v)
		}
	}
	if sum <= float64(Rows*Cols)*float64(bg) {
		t.Fatal("image is blank")
	}
}

func TestDecodeErrors(t *testing.T) {
	img := []byte{0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28}
	img = append(img, make([]byte, 784)...)
	lab := []byte{0, 0, 8, 1, 0, 0, 0, 1, 3}
	if s, err := decode(img, lab); err != nil || s.Len() != 1 || s.Label(0) != 3 {
		t.Fatalf("valid file: %v", err)
	}
	f := func(img, lab []byte) {
		t.Helper()
		if _, err := decode(img, lab); !errors.Is(err, ErrFormat) {
			t.Fatalf("want ErrFormat, got %v", err)
		}
	}
	f(img[:10], lab)
	f(img, lab[:8])
	f(img[:len(img)-1], lab)
	f(img, []byte{0, 0, 8, 1, 0, 0, 0, 2, 3, 4})
	f(img, []byte{0, 0, 8, 1, 0, 0, 0, 1, 10})
	bad := slices.Clone(img)
	bad[3] = 1
	f(bad, lab)
	bad = slices.Clone(img)
	bad[11] = 27
	f(bad, lab)
}
