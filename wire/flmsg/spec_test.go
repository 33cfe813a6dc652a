package flmsg

import (
	"os"
	"regexp"
	"strings"
	"testing"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/wire/fbs"
)

// parseSchema reads table definitions from .fbs files: table name → fields
// in slot order as "name:type".
func parseSchema(t *testing.T, paths ...string) map[string][]string {
	t.Helper()
	tables := map[string][]string{}
	tableRE := regexp.MustCompile(`^table\s+(\w+)\s*\{`)
	fieldRE := regexp.MustCompile(`^(\w+)\s*:\s*([\w\[\]]+)`)
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("cannot read schema: %s", err)
		}
		cur := ""
		for _, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			if m := tableRE.FindStringSubmatch(line); m != nil {
				cur = m[1]
				tables[cur] = nil
				continue
			}
			if strings.HasPrefix(line, "}") {
				cur = ""
				continue
			}
			if m := fieldRE.FindStringSubmatch(line); m != nil && cur != "" {
				tables[cur] = append(tables[cur], m[1]+":"+m[2])
			}
		}
	}
	return tables
}

// The verifier's table descriptions (spec.go) match wire/schema/*.fbs slot
// for slot, for every table the decoders reach.
func TestSpecMatchesSchema(t *testing.T) {
	schema := parseSchema(t, "../schema/fl_job.fbs", "../schema/cipher.fbs")
	enums := map[string]int{"ResponseCode": 4, "AggregationType": 1, "Metrics": 1, "EarlyStopType": 1, "CompressType": 1}
	scalars := map[string]int{"int": 4, "float": 4, "bool": 1, "byte": 1, "ubyte": 1, "int8": 1}
	seen := map[*tableSpec]bool{}
	var check func(ts *tableSpec)
	check = func(ts *tableSpec) {
		if seen[ts] {
			return
		}
		seen[ts] = true
		fields, ok := schema[ts.name]
		if !ok {
			t.Fatalf("table %s is not in the schema", ts.name)
		}
		if len(fields) != len(ts.fields) {
			t.Fatalf("%s: schema has %d fields %v, spec %d", ts.name, len(fields), fields, len(ts.fields))
		}
		for i, f := range ts.fields {
			name, typ, _ := strings.Cut(fields[i], ":")
			if name != f.name {
				t.Fatalf("%s slot %d: schema %q, spec %q", ts.name, i, name, f.name)
			}
			elem, isVec := strings.CutPrefix(typ, "[")
			elem = strings.TrimSuffix(elem, "]")
			size := scalars[elem]
			if size == 0 {
				size = enums[elem]
			}
			var want kind
			switch {
			case isVec && elem == "string":
				want = kStringVector
			case isVec && size > 0:
				want = kVector
			case isVec:
				want = kTableVector
			case elem == "string":
				want = kString
			case size > 0:
				want = kScalar
			default:
				want = kTable
			}
			if f.kind != want || ((want == kScalar || want == kVector) && f.size != size) {
				t.Fatalf("%s.%s: schema type %s, spec kind %d size %d", ts.name, f.name, typ, f.kind, f.size)
			}
			if want == kTable || want == kTableVector {
				if f.sub == nil || f.sub.name != elem {
					t.Fatalf("%s.%s: schema type %s, spec sub-table %v", ts.name, f.name, typ, f.sub)
				}
				check(f.sub)
			}
		}
	}
	for _, ts := range []*tableSpec{requestFLJobSpec, requestUpdateModelSpec, requestGetModelSpec, responseFLJobSpec, responseUpdateModelSpec, responseGetModelSpec} {
		check(ts)
	}
}

// A ≈r1.7 client's updateModel with every appended field set decodes.
func TestRequestUpdateModelR17AllFields(t *testing.T) {
	b := flatbuffers.NewBuilder(0)
	ts := []Tensor{{Name: "fc3.bias", Data: []float32{1, 2, 3}}}
	fm := r17FeatureMaps(b, ts)
	cname := b.CreateString("fc3.weight")
	cdata := b.CreateByteVector([]byte{0x80, 0x7f, 0})
	fbs.CompressFeatureMapStart(b)
	fbs.CompressFeatureMapAddWeightFullname(b, cname)
	fbs.CompressFeatureMapAddCompressData(b, cdata)
	fbs.CompressFeatureMapAddMinVal(b, -1)
	fbs.CompressFeatureMapAddMaxVal(b, 1)
	cfm := fbs.CompressFeatureMapEnd(b)
	fbs.RequestUpdateModelStartCompressFeatureMapVector(b, 1)
	b.PrependUOffsetT(cfm)
	cvec := b.EndVector(1)
	fbs.RequestUpdateModelStartIndexArrayVector(b, 2)
	b.PrependInt32(5)
	b.PrependInt32(4)
	idx := b.EndVector(2)
	n1, n2 := b.CreateString("a"), b.CreateString("b")
	fbs.RequestUpdateModelStartNameVecVector(b, 2)
	b.PrependUOffsetT(n2)
	b.PrependUOffsetT(n1)
	names := b.EndVector(2)
	sig := b.CreateByteVector([]byte("sig"))
	flName, flID, stamp := b.CreateString("lenet"), b.CreateString("dev"), b.CreateString("1700000000000")
	fbs.RequestUpdateModelStart(b)
	fbs.RequestUpdateModelAddFlName(b, flName)
	fbs.RequestUpdateModelAddFlId(b, flID)
	fbs.RequestUpdateModelAddIteration(b, 6)
	fbs.RequestUpdateModelAddFeatureMap(b, fm)
	fbs.RequestUpdateModelAddTimestamp(b, stamp)
	fbs.RequestUpdateModelAddSignature(b, sig)
	fbs.RequestUpdateModelAddUploadLoss(b, 0.75)
	fbs.RequestUpdateModelAddSign(b, -1)
	fbs.RequestUpdateModelAddIndexArray(b, idx)
	fbs.RequestUpdateModelAddCompressFeatureMap(b, cvec)
	fbs.RequestUpdateModelAddUploadCompressType(b, fbs.CompressTypeDIFF_SPARSE_QUANT)
	fbs.RequestUpdateModelAddUploadSparseRate(b, 0.5)
	fbs.RequestUpdateModelAddNameVec(b, names)
	b.Finish(fbs.RequestUpdateModelEnd(b))
	r, err := DecodeRequestUpdateModel(b.FinishedBytes())
	if err != nil {
		t.Fatalf("cannot decode: %s", err)
	}
	if string(r.FLName) != "lenet" || string(r.FLID) != "dev" || r.Iteration != 6 || string(r.Signature) != "sig" || r.UploadLoss != 0.75 ||
		r.Sign != -1 || r.CompressFeatureMap != 1 || r.UploadCompressType != int8(fbs.CompressTypeDIFF_SPARSE_QUANT) || r.UploadSparseRate != 0.5 {
		t.Fatalf("got %+v", r)
	}
	checkFeatureMaps(t, r.FeatureMaps, ts)
}
