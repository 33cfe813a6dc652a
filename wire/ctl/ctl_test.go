package ctl

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"testing"
)

// TestCompactRoundTrip: the per-request messages travel compactly and come
// back equal, whatever their strings and numbers.
func TestCompactRoundTrip(t *testing.T) {
	msgs := []any{
		Admit{FLID: "f1", DataSize: 32},
		Admit{FLID: "", DataSize: -1},
		Admit{FLID: "\x00\xff{\"é", DataSize: math.MaxInt},
		CountUpdate{FLID: "device-7", Iteration: 12},
		CountUpdate{FLID: string(make([]byte, 300)), Iteration: math.MaxUint64},
		Answer{Code: AnswerSucceed, Iteration: 3, NextReqTime: 1_700_000_000_000, DataSize: 32},
		Answer{Code: AnswerOutOfTime, Reason: "The current round is over.", Iteration: 4, NextReqTime: -5},
	}
	for _, m := range msgs {
		b := Encode(m)
		if b[0] != compactTag {
			t.Fatalf("%T encoded as %q, not compactly", m, b)
		}
		got := reflect.New(reflect.TypeOf(m))
		if err := Decode(b, got.Interface()); err != nil {
			t.Fatalf("%+v: %v", m, err)
		}
		if !reflect.DeepEqual(got.Elem().Interface(), m) {
			t.Fatalf("%T round trip: got %+v, want %+v", m, got.Elem().Interface(), m)
		}
		if j, _ := json.Marshal(m); len(b) >= len(j) {
			t.Errorf("%T: compact body of %d bytes, JSON %d", m, len(b), len(j))
		}
	}
}

// TestDecodeAcceptsJSON: the JSON form of a compact message still decodes,
// and messages without a compact form stay JSON.
func TestDecodeAcceptsJSON(t *testing.T) {
	var a Answer
	if err := Decode([]byte(`{"code":"succeed","iteration":9,"next_req_time":5,"data_size":2}`), &a); err != nil {
		t.Fatal(err)
	}
	if a != (Answer{Code: AnswerSucceed, Iteration: 9, NextReqTime: 5, DataSize: 2}) {
		t.Fatalf("decoded %+v", a)
	}
	if b := Encode(Heartbeat{NodeID: "s0", Iteration: 1}); b[0] != '{' {
		t.Fatalf("a heartbeat encoded as %q", b)
	}
}

// TestCompactBadInput: truncated bodies, trailing bytes, lengths past the
// end and a compact body for a message without a compact form are errors.
func TestCompactBadInput(t *testing.T) {
	good := Encode(Answer{Code: AnswerSucceed, Reason: "ok", Iteration: 300, NextReqTime: 1 << 40, DataSize: 7})
	for n := 1; n < len(good); n++ {
		var a Answer
		if err := Decode(good[:n], &a); !errors.Is(err, errCompact) {
			t.Fatalf("truncated to %d of %d bytes: %v", n, len(good), err)
		}
	}
	var a Answer
	if err := Decode(append(good[:len(good):len(good)], 0), &a); !errors.Is(err, errCompact) {
		t.Fatalf("trailing byte: %v", err)
	}
	long := []byte{compactTag, 0xff, 0xff, 0xff, 0xff, 0x0f, 'x'} // a string longer than the body
	if err := Decode(long, &a); !errors.Is(err, errCompact) {
		t.Fatalf("string past the end: %v", err)
	}
	overflow := []byte{compactTag, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}
	if err := Decode(overflow, &a); !errors.Is(err, errCompact) {
		t.Fatalf("varint overflow: %v", err)
	}
	var h Heartbeat
	if err := Decode(Encode(Admit{FLID: "x"}), &h); !errors.Is(err, errCompact) {
		t.Fatalf("a compact body into a heartbeat: %v", err)
	}
}

// FuzzDecodeCompact: no body makes Decode panic, and whatever decodes
// encodes back to the same bytes.
func FuzzDecodeCompact(f *testing.F) {
	f.Add(Encode(Admit{FLID: "f1", DataSize: 32}))
	f.Add(Encode(CountUpdate{FLID: "f1", Iteration: 2}))
	f.Add(Encode(Answer{Code: AnswerOutOfTime, Reason: "late", Iteration: 3, NextReqTime: 4, DataSize: 5}))
	f.Add([]byte{compactTag})
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, v := range []any{&Admit{}, &CountUpdate{}, &Answer{}} {
			if err := Decode(body, v); err != nil || len(body) == 0 || body[0] != compactTag {
				continue
			}
			if again := Encode(v); string(again) != string(body) {
				// Not the same bytes when a varint came padded, which
				// Uvarint accepts: then the same message.
				w := reflect.New(reflect.TypeOf(v).Elem()).Interface()
				if err := Decode(again, w); err != nil || !reflect.DeepEqual(w, v) {
					t.Fatalf("%T %q decoded to %+v, which encodes to %q (%v)", v, body, v, again, err)
				}
			}
		}
	})
}

// BenchmarkAnswer encodes and decodes an admission's answer, compactly and,
// as the baseline, as the JSON every message used to be.
func BenchmarkAnswer(b *testing.B) {
	a := Answer{Code: AnswerSucceed, Iteration: 1234, NextReqTime: 1_764_000_000_000, DataSize: 32}
	b.Run("compact", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var got Answer
			if err := Decode(Encode(a), &got); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			body, _ := json.Marshal(a)
			var got Answer
			if err := json.Unmarshal(body, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}
