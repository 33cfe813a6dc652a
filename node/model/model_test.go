package model

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"testing"
)

func TestSHA256IsOfLittleEndianBytes(t *testing.T) {
	m := InitLeNet5(3)
	b := make([]byte, 4*len(m.Data))
	for i, v := range m.Data {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	sum := sha256.Sum256(b)
	if got := m.SHA256(); got != hex.EncodeToString(sum[:]) {
		t.Fatalf("SHA256 = %s, want %x", got, sum)
	}
	if InitLeNet5(3).SHA256() != m.SHA256() || InitLeNet5(4).SHA256() == m.SHA256() {
		t.Fatal("the initialiser is not deterministic per seed")
	}
	if m.Layout.Size != 61684 {
		t.Fatalf("LeNet-5 has %d parameters, want 61,684", m.Layout.Size)
	}
}

func TestLayoutErrors(t *testing.T) {
	f := func(specs []Spec) {
		t.Helper()
		if _, err := NewLayout(specs); err == nil {
			t.Fatalf("NewLayout(%v) accepted", specs)
		}
	}
	f([]Spec{{"", []int{1}}})
	f([]Spec{{"a", []int{1}}, {"a", []int{2}}})
	f([]Spec{{"a", []int{0}}})
	f([]Spec{{"a", nil}})
}
