package ctl

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The messages of every device request (Admit and CountUpdate, and their
// Answer: two round trips per device-iteration) travel in a compact
// binary form instead of JSON, whose reflection cost the scheduler and
// the servers 2-3 % of their CPU under load. A compact body starts with
// compactTag, a byte no JSON text starts with, followed by the fields in
// order: strings as a uvarint length and the bytes, integers as varints.
const compactTag = 0x01

// compact is a message with a compact binary form.
type compact interface {
	appendCompact(b []byte) []byte
}

// compactDecoder decodes the compact form (without its tag).
type compactDecoder interface {
	decodeCompact(r *reader)
}

// errCompact reports a compact body that ends early or runs on.
var errCompact = errors.New("malformed compact control message")

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func (a Admit) appendCompact(b []byte) []byte {
	b = appendString(b, a.FLID)
	return binary.AppendVarint(b, int64(a.DataSize))
}

func (a *Admit) decodeCompact(r *reader) {
	a.FLID, a.DataSize = r.string(), int(r.varint())
}

func (c CountUpdate) appendCompact(b []byte) []byte {
	b = appendString(b, c.FLID)
	return binary.AppendUvarint(b, c.Iteration)
}

func (c *CountUpdate) decodeCompact(r *reader) {
	c.FLID, c.Iteration = r.string(), r.uvarint()
}

func (a Answer) appendCompact(b []byte) []byte {
	b = appendString(b, a.Code)
	b = appendString(b, a.Reason)
	b = binary.AppendUvarint(b, a.Iteration)
	b = binary.AppendVarint(b, a.NextReqTime)
	return binary.AppendVarint(b, int64(a.DataSize))
}

func (a *Answer) decodeCompact(r *reader) {
	a.Code, a.Reason = r.code(), r.string()
	a.Iteration, a.NextReqTime, a.DataSize = r.uvarint(), r.varint(), int(r.varint())
}

// reader reads a compact body; the first error sticks and zero values
// follow it.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail() {
	if r.err == nil {
		r.err = errCompact
	}
	r.b = nil
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail()
		return nil
	}
	s := r.b[:n]
	r.b = r.b[n:]
	return s
}

func (r *reader) string() string { return string(r.bytes()) }

// code reads an answer code: one of the known ones without allocating.
func (r *reader) code() string {
	s := r.bytes()
	for _, c := range [...]string{AnswerSucceed, AnswerOutOfTime, AnswerDisabled, AnswerSafemode} {
		if string(s) == c {
			return c
		}
	}
	return string(s)
}

// decodeCompact fills v from the compact body b (tag included).
func decodeCompact(b []byte, v compactDecoder) error {
	r := reader{b: b[1:]}
	v.decodeCompact(&r)
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%w: %d bytes after the last field", errCompact, len(r.b))
	}
	if r.err != nil {
		return fmt.Errorf("cannot decode %T: %w", v, r.err)
	}
	return nil
}
