package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"unicode/utf8"

	"github.com/fedcluster/fedcluster/node/model"
)

// MaxHeaderBytes is the reference implementation's bound on the JSON header.
const MaxHeaderBytes = 100_000_000

// MetadataKey is the reserved header key holding string metadata.
const MetadataKey = "__metadata__"

// Sentinel errors; decoding errors wrap ErrInvalid.
var (
	// ErrInvalid is wrapped by every error about a malformed file.
	ErrInvalid = errors.New("invalid safetensors")
	// ErrDtype is wrapped when a tensor has a dtype other than F32.
	ErrDtype = errors.New("unsupported dtype")
	// ErrNonFinite is wrapped when RejectNonFinite finds NaN or Inf.
	ErrNonFinite = errors.New("non-finite value")
	// ErrLayout is wrapped when the file does not match Options.Layout.
	ErrLayout = errors.New("layout mismatch")
)

// Options tune decoding. The zero value (or nil) is valid.
type Options struct {
	// MaxHeaderBytes bounds the JSON header; 0 means MaxHeaderBytes
	// (100,000,000, the reference's limit).
	MaxHeaderBytes int64
	// MaxDataBytes bounds the data section when reading from a stream of
	// unknown size; 0 means no bound beyond the input itself.
	MaxDataBytes int64
	// Layout, if set, is the expected layout: the file must hold exactly
	// these names and shapes (in any order) and the model returned shares
	// this Layout pointer.
	Layout *model.Layout
	// RejectNonFinite refuses files holding NaN or ±Inf.
	RejectNonFinite bool
}

func (o *Options) maxHeader() int64 {
	if o == nil || o.MaxHeaderBytes <= 0 {
		return MaxHeaderBytes
	}
	return o.MaxHeaderBytes
}

// header is a safetensors header as the encoder lays it out: the exact bytes
// (already padded) and the size of the data section.
type header struct {
	json     []byte
	dataSize int64
}

func buildHeader(m *model.Model, meta map[string]string) (header, error) {
	if m == nil || m.Layout == nil {
		return header{}, fmt.Errorf("cannot encode safetensors: nil model")
	}
	if len(m.Data) != m.Layout.Size {
		return header{}, fmt.Errorf("cannot encode safetensors: model has %d floats, layout wants %d", len(m.Data), m.Layout.Size)
	}
	return layoutHeader(m.Layout, meta)
}

// Prefix is what Encode writes before the weights of a model of layout l
// with meta: the header's length and the padded JSON header. A writer that
// puts the weights in place itself (a file filled piece by piece) writes
// it at the start, and the weights at len(Prefix).
func Prefix(l *model.Layout, meta map[string]string) ([]byte, error) {
	if l == nil {
		return nil, fmt.Errorf("cannot encode safetensors: nil layout")
	}
	h, err := layoutHeader(l, meta)
	if err != nil {
		return nil, err
	}
	b := binary.LittleEndian.AppendUint64(make([]byte, 0, 8+len(h.json)), uint64(len(h.json)))
	return append(b, h.json...), nil
}

func layoutHeader(l *model.Layout, meta map[string]string) (header, error) {
	var b []byte
	b = append(b, '{')
	first := true
	if len(meta) > 0 {
		keys := make([]string, 0, len(meta))
		for k := range meta {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b = appendString(b, MetadataKey)
		b = append(b, ":{"...)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, meta[k])
		}
		b = append(b, '}')
		first = false
	}
	var off int64
	for _, p := range l.Params {
		if p.Name == MetadataKey {
			return header{}, fmt.Errorf("cannot encode safetensors: tensor name %q is reserved", p.Name)
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendString(b, p.Name)
		b = append(b, `:{"dtype":"F32","shape":[`...)
		for i, d := range p.Shape {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(d), 10)
		}
		b = append(b, `],"data_offsets":[`...)
		b = strconv.AppendInt(b, off, 10)
		b = append(b, ',')
		off += int64(p.Len) * 4
		b = strconv.AppendInt(b, off, 10)
		b = append(b, "]}"...)
	}
	b = append(b, '}')
	for len(b)%8 != 0 {
		b = append(b, ' ')
	}
	return header{json: b, dataSize: off}, nil
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	q, err := json.Marshal(s)
	if err != nil {
		panic("BUG: cannot marshal string: " + err.Error())
	}
	return append(b, q...)
}

// EncodedSize is the exact number of bytes Encode writes for m and meta.
func EncodedSize(m *model.Model, meta map[string]string) (int64, error) {
	h, err := buildHeader(m, meta)
	if err != nil {
		return 0, err
	}
	return 8 + int64(len(h.json)) + h.dataSize, nil
}

// Encode writes m as safetensors to w, streaming the weights without a second
// copy of the model, and returns the bytes written.
func Encode(w io.Writer, m *model.Model, meta map[string]string) (int64, error) {
	h, err := buildHeader(m, meta)
	if err != nil {
		return 0, err
	}
	var pre [8]byte
	binary.LittleEndian.PutUint64(pre[:], uint64(len(h.json)))
	n, err := w.Write(pre[:])
	total := int64(n)
	if err != nil {
		return total, fmt.Errorf("cannot write safetensors header: %w", err)
	}
	n, err = w.Write(h.json)
	total += int64(n)
	if err != nil {
		return total, fmt.Errorf("cannot write safetensors header: %w", err)
	}
	k, err := writeFloats(w, m.Data)
	total += k
	if err != nil {
		return total, fmt.Errorf("cannot write safetensors data: %w", err)
	}
	return total, nil
}

// AppendEncode appends the safetensors form of m to dst.
func AppendEncode(dst []byte, m *model.Model, meta map[string]string) ([]byte, error) {
	h, err := buildHeader(m, meta)
	if err != nil {
		return dst, err
	}
	dst = binary.LittleEndian.AppendUint64(dst, uint64(len(h.json)))
	dst = append(dst, h.json...)
	start := len(dst)
	dst = append(dst, make([]byte, h.dataSize)...)
	putFloats(dst[start:], m.Data)
	return dst, nil
}

// writeFloats writes s little-endian: straight from memory on little-endian
// hosts, through a small buffer otherwise.
func writeFloats(w io.Writer, s []float32) (int64, error) {
	if littleEndian {
		n, err := w.Write(model.FloatBytes(s))
		return int64(n), err
	}
	var buf [32 << 10]byte
	var total int64
	for len(s) > 0 {
		k := min(len(s), len(buf)/4)
		putFloats(buf[:4*k], s[:k])
		n, err := w.Write(buf[:4*k])
		total += int64(n)
		if err != nil {
			return total, err
		}
		s = s[k:]
	}
	return total, nil
}

func putFloats(dst []byte, s []float32) {
	if littleEndian {
		copy(dst, model.FloatBytes(s))
		return
	}
	for i, f := range s {
		binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(f))
	}
}

func getFloats(dst []float32, src []byte) {
	if littleEndian {
		copy(model.FloatBytes(dst), src)
		return
	}
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
	}
}

// tensorEntry is one parsed header entry.
type tensorEntry struct {
	name       string
	shape      []int
	n          int // elements
	begin, end int64
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// Decode parses a whole safetensors file held in b. The model returned owns
// its weights (nothing aliases b).
func Decode(b []byte, opts *Options) (*model.Model, map[string]string, error) {
	if len(b) < 8 {
		return nil, nil, invalidf("file of %d bytes is shorter than the 8-byte header length", len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	if n > uint64(opts.maxHeader()) {
		return nil, nil, invalidf("header length %d exceeds the limit %d", n, opts.maxHeader())
	}
	if n > uint64(len(b)-8) {
		return nil, nil, invalidf("header length %d runs past the end of the %d-byte file", n, len(b))
	}
	entries, meta, err := parseHeader(b[8 : 8+n])
	if err != nil {
		return nil, nil, err
	}
	data := b[8+n:]
	if err := checkOffsets(entries, int64(len(data))); err != nil {
		return nil, nil, err
	}
	m, err := place(entries, opts)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range entries {
		p, _ := m.Layout.Lookup(e.name)
		getFloats(m.Data[p.Offset:p.Offset+p.Len], data[e.begin:e.end])
	}
	if err := checkFinite(m, opts); err != nil {
		return nil, nil, err
	}
	return m, meta, nil
}

// Read decodes a safetensors file from r. size is the file's length if known
// (it bounds what the header may claim before anything is allocated), or -1.
// The header is read incrementally, so a short input claiming a huge header
// allocates only what it holds.
func Read(r io.Reader, size int64, opts *Options) (*model.Model, map[string]string, error) {
	var pre [8]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return nil, nil, invalidf("cannot read header length: %v", err)
	}
	n := binary.LittleEndian.Uint64(pre[:])
	if n > uint64(opts.maxHeader()) {
		return nil, nil, invalidf("header length %d exceeds the limit %d", n, opts.maxHeader())
	}
	if size >= 0 && (size < 8 || n > uint64(size-8)) {
		return nil, nil, invalidf("header length %d runs past the end of the %d-byte file", n, size)
	}
	var hb bytes.Buffer
	if size >= 0 {
		hb.Grow(int(n))
	}
	if k, err := io.CopyN(&hb, r, int64(n)); err != nil {
		return nil, nil, invalidf("cannot read %d-byte header (got %d): %v", n, k, err)
	}
	entries, meta, err := parseHeader(hb.Bytes())
	if err != nil {
		return nil, nil, err
	}
	var dataSize int64
	for _, e := range entries {
		dataSize = max(dataSize, e.end)
	}
	if size >= 0 {
		if want := size - 8 - int64(n); dataSize != want {
			// Let checkOffsets produce the precise message.
			if err := checkOffsets(entries, want); err != nil {
				return nil, nil, err
			}
		}
	} else if opts != nil && opts.MaxDataBytes > 0 && dataSize > opts.MaxDataBytes {
		return nil, nil, invalidf("data section of %d bytes exceeds the limit %d", dataSize, opts.MaxDataBytes)
	}
	if err := checkOffsets(entries, dataSize); err != nil {
		return nil, nil, err
	}
	m, err := place(entries, opts)
	if err != nil {
		return nil, nil, err
	}
	// Entries are sorted by offset and contiguous: read them in file order.
	var buf []byte
	if !littleEndian {
		buf = make([]byte, 32<<10)
	}
	for _, e := range entries {
		p, _ := m.Layout.Lookup(e.name)
		dst := m.Data[p.Offset : p.Offset+p.Len]
		if err := readFloats(r, dst, buf); err != nil {
			return nil, nil, invalidf("cannot read tensor %q: %v", e.name, err)
		}
	}
	if size < 0 {
		var one [1]byte
		if k, _ := io.ReadFull(r, one[:]); k != 0 {
			return nil, nil, invalidf("trailing bytes after the last tensor")
		}
	}
	if err := checkFinite(m, opts); err != nil {
		return nil, nil, err
	}
	return m, meta, nil
}

func readFloats(r io.Reader, dst []float32, buf []byte) error {
	if littleEndian {
		_, err := io.ReadFull(r, model.FloatBytes(dst))
		return err
	}
	for len(dst) > 0 {
		k := min(len(dst), len(buf)/4)
		if _, err := io.ReadFull(r, buf[:4*k]); err != nil {
			return err
		}
		getFloats(dst[:k], buf[:4*k])
		dst = dst[k:]
	}
	return nil
}

func checkFinite(m *model.Model, opts *Options) error {
	if opts == nil || !opts.RejectNonFinite {
		return nil
	}
	for _, p := range m.Layout.Params {
		for i, f := range m.Data[p.Offset : p.Offset+p.Len] {
			if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
				return fmt.Errorf("%w: %w: tensor %q element %d is %v", ErrInvalid, ErrNonFinite, p.Name, i, f)
			}
		}
	}
	return nil
}

// place builds the model the entries decode into: the expected layout if
// given (names and shapes must match), else a layout in offset order.
func place(entries []tensorEntry, opts *Options) (*model.Model, error) {
	if opts != nil && opts.Layout != nil {
		l := opts.Layout
		if len(entries) != len(l.Params) {
			return nil, fmt.Errorf("%w: %w: file has %d tensors, layout has %d", ErrInvalid, ErrLayout, len(entries), len(l.Params))
		}
		for _, e := range entries {
			p, ok := l.Lookup(e.name)
			if !ok {
				return nil, fmt.Errorf("%w: %w: unexpected tensor %q", ErrInvalid, ErrLayout, e.name)
			}
			if !sameShape(p.Shape, e.shape) {
				return nil, fmt.Errorf("%w: %w: tensor %q has shape %v, want %v", ErrInvalid, ErrLayout, e.name, e.shape, p.Shape)
			}
		}
		return model.New(l), nil
	}
	specs := make([]model.Spec, len(entries))
	for i, e := range entries {
		specs[i] = model.Spec{Name: e.name, Shape: e.shape}
	}
	l, err := model.NewLayout(specs)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return model.New(l), nil
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// checkOffsets sorts entries by begin offset and checks that they tile
// [0, dataSize) exactly.
func checkOffsets(entries []tensorEntry, dataSize int64) error {
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].begin != entries[j].begin {
			return entries[i].begin < entries[j].begin
		}
		return entries[i].end < entries[j].end
	})
	var pos int64
	for _, e := range entries {
		if e.begin != pos {
			if e.begin < pos {
				return invalidf("tensor %q at [%d,%d) overlaps the previous tensor ending at %d", e.name, e.begin, e.end, pos)
			}
			return invalidf("gap before tensor %q: it begins at %d, previous data ends at %d", e.name, e.begin, pos)
		}
		if e.end < e.begin || e.end-e.begin != int64(e.n)*4 {
			return invalidf("tensor %q: data_offsets [%d,%d) hold %d bytes, shape %v needs %d", e.name, e.begin, e.end, e.end-e.begin, e.shape, int64(e.n)*4)
		}
		pos = e.end
	}
	if pos != dataSize {
		return invalidf("tensors cover %d bytes but the data section has %d", pos, dataSize)
	}
	return nil
}

// maxElements bounds one tensor so that 4×elements and sums of offsets never
// overflow int64 and fit an int on every platform we build for.
const maxElements = math.MaxInt32

// parseHeader parses the JSON header strictly.
func parseHeader(h []byte) ([]tensorEntry, map[string]string, error) {
	if !utf8.Valid(h) {
		return nil, nil, invalidf("header is not valid UTF-8")
	}
	if len(h) == 0 || h[0] != '{' {
		return nil, nil, invalidf("header does not start with '{'")
	}
	dec := json.NewDecoder(bytes.NewReader(h))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil {
		return nil, nil, invalidf("malformed header JSON: %v", err)
	}
	var (
		entries []tensorEntry
		meta    map[string]string
		seen    = map[string]bool{}
	)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, invalidf("malformed header JSON: %v", err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, nil, invalidf("malformed header JSON: key %v", tok)
		}
		if seen[name] {
			return nil, nil, invalidf("duplicate header key %q", name)
		}
		seen[name] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, nil, invalidf("malformed header JSON at %q: %v", name, err)
		}
		if name == MetadataKey {
			meta, err = parseMeta(raw)
			if err != nil {
				return nil, nil, err
			}
			continue
		}
		e, err := parseEntry(name, raw)
		if err != nil {
			return nil, nil, err
		}
		entries = append(entries, e)
	}
	if _, err := dec.Token(); err != nil {
		return nil, nil, invalidf("malformed header JSON: %v", err)
	}
	rest := h[dec.InputOffset():]
	if len(bytes.TrimLeft(rest, " \t\r\n")) != 0 {
		return nil, nil, invalidf("trailing bytes after the header JSON object")
	}
	return entries, meta, nil
}

func parseMeta(raw json.RawMessage) (map[string]string, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, invalidf("%s must be an object of strings", MetadataKey)
	}
	meta := map[string]string{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, invalidf("malformed %s: %v", MetadataKey, err)
		}
		k := tok.(string) // object keys are always strings
		tok, err = dec.Token()
		if err != nil {
			return nil, invalidf("malformed %s: %v", MetadataKey, err)
		}
		v, ok := tok.(string)
		if !ok {
			return nil, invalidf("%s value of %q is not a string", MetadataKey, k)
		}
		if _, dup := meta[k]; dup {
			return nil, invalidf("duplicate %s key %q", MetadataKey, k)
		}
		meta[k] = v
	}
	return meta, nil
}

func parseEntry(name string, raw json.RawMessage) (tensorEntry, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return tensorEntry{}, invalidf("tensor %q is not an object", name)
	}
	for k := range fields {
		if k != "dtype" && k != "shape" && k != "data_offsets" {
			return tensorEntry{}, invalidf("tensor %q has unknown key %q", name, k)
		}
	}
	if len(fields) != 3 {
		return tensorEntry{}, invalidf("tensor %q needs dtype, shape and data_offsets", name)
	}
	var dtype string
	if err := json.Unmarshal(fields["dtype"], &dtype); err != nil {
		return tensorEntry{}, invalidf("tensor %q: dtype is not a string", name)
	}
	if dtype != "F32" {
		return tensorEntry{}, fmt.Errorf("%w: %w: tensor %q has dtype %q, only F32 is supported", ErrInvalid, ErrDtype, name, dtype)
	}
	var shape []uint64
	if err := json.Unmarshal(fields["shape"], &shape); err != nil || shape == nil {
		return tensorEntry{}, invalidf("tensor %q: shape is not an array of non-negative integers", name)
	}
	var offs []uint64
	if err := json.Unmarshal(fields["data_offsets"], &offs); err != nil || len(offs) != 2 {
		return tensorEntry{}, invalidf("tensor %q: data_offsets is not a pair of non-negative integers", name)
	}
	if len(shape) == 0 {
		return tensorEntry{}, invalidf("tensor %q is a scalar (empty shape), which a model layout cannot hold", name)
	}
	n := uint64(1)
	e := tensorEntry{name: name, shape: make([]int, len(shape))}
	for i, d := range shape {
		if d == 0 {
			return tensorEntry{}, invalidf("tensor %q has a zero dimension in shape %v", name, shape)
		}
		if d > maxElements || n*d > maxElements {
			return tensorEntry{}, invalidf("tensor %q: shape %v is too large", name, shape)
		}
		n *= d
		e.shape[i] = int(d)
	}
	if offs[0] > math.MaxInt64/2 || offs[1] > math.MaxInt64/2 {
		return tensorEntry{}, invalidf("tensor %q: data_offsets %v out of range", name, offs)
	}
	e.n = int(n)
	e.begin, e.end = int64(offs[0]), int64(offs[1])
	return e, nil
}
