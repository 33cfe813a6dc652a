// Package flmsg reads and writes the FlatBuffers messages of MindSpore's
// federated-learning device protocol (startFLJob, updateModel, getModel)
// safely and without copying tensors.
//
// # Layout
//
// The schema is wire/schema/*.fbs: MindSpore's fl_job.fbs and cipher.fbs in
// the ≈r1.7 layout, which is r1.5's with fields appended (slot numbers are
// the wire contract; see the comments there). flatc 2.0.8 generates
// wire/fbs from it (scripts/gen-wire.sh). Because fields were only appended,
// an r1.5 request is an ≈r1.7 request with the new slots absent, and an r1.5
// client reads our responses as long as FLPlan.cipher, whose layout changed
// incompatibly, is left unset — which these builders always do. The tests
// prove both directions with an r1.5-shaped generated package (wire/fbs/r15).
// Messages have no file identifier and no size prefix, as MindSpore sends
// them. Fields appended by a later schema are ignored.
//
// A message is a root uoffset, then tables (an soffset to a vtable of
// uint16 field offsets, then inline scalars and uoffsets), strings (uint32
// length, bytes, NUL) and vectors (uint32 count, elements). FeatureMap.data
// is a [float] vector: count × 4 little-endian bytes, 4-byte aligned
// relative to the start of the message.
//
// # Verifier
//
// The Go FlatBuffers runtime has no verifier and its generated readers
// index the buffer blindly, so every decoder here first runs verify, a
// bounds checker modelled on C++'s flatbuffers::Verifier, over a table
// description of the schema (spec.go): the root offset; each table's
// alignment, vtable position, vtable size and table size; for every field
// the vtable names, that it lies inside its table and is aligned; every
// offset non-zero, non-negative and inside the buffer; strings with their
// length and NUL inside the buffer; vectors with count × element size
// inside the buffer (compared in 64 bits); vectors of strings and tables
// element by element; nested tables recursively, at most 64 deep and at most
// one million tables per message. The first problem is reported with its
// path, e.g. "cannot decode RequestUpdateModel: RequestUpdateModel:
// feature_map: [3]: FeatureMap: data: vector of 4294967295 × 4 bytes at 120
// runs past the end of the 5000-byte buffer", as a *SchemaError whose
// Reason() is MindSpore's RequestError reason "The schema of
// RequestUpdateModel is invalid.". The readers then index the verified
// buffer directly; a recover() in every decoder turns a panic, which would
// mean a verifier bug, into a *SchemaError too. Verification allocates
// nothing on success and costs O(number of tables), not O(tensor size).
//
// # Zero-copy rules
//
// Decoded requests are views: byte-slice fields and FeatureMaps point into
// the request body and are valid only while the body is neither reused nor
// modified (with fasthttp: until the handler returns). Copy what must
// outlive it, e.g. string(r.FLID). FeatureMap.Floats returns the tensor as a
// []float32 aliasing the body with no copy at all. That is only possible
// when the data is 4-byte aligned in memory: the verifier guarantees
// alignment relative to the message start, so it holds whenever the body
// itself starts at a 4-byte aligned address (Go allocations do). If it does
// not (or the host is big-endian), Floats reports false and FeatureMap.Data
// copies the tensor with one memmove into a caller-provided scratch slice;
// the server should keep one scratch per worker. Decoding an updateModel
// request of any size allocates nothing (tested with LeNet-5).
//
// # Building
//
// Builders take a caller-owned *flatbuffers.Builder, Reset it, and return
// its finished bytes (valid until the builder is used again); a reused
// builder makes them allocation-free. Float vectors are written with one
// bulk copy (the builder's byte-vector path, then the length word patched
// from bytes to elements), 15 to 65 times faster than the generated
// per-element Prepend. ModelBlock serializes a model's [FeatureMap] vector
// once so that each startFLJob/getModel response only copies it in (one
// memmove) and adds its few small fields. Measured, this is no faster than
// building from the model, because both are bound by the same memmove; the
// real saving is that every device asking for the same stored model between
// two iteration switches gets byte-identical responses, so a server can
// build one per (iteration, next_req_time) and serve those bytes as they
// are. With Split, a builder writes only the message's head and points its
// feature_map past its own end: head ++ the block's bytes is the message,
// so the server keeps one serialized model for both answers that carry it
// and a load generator one update for all its devices (split.go). A
// BlockFrame goes further for large models: the block's names, tables and
// length words depend only on the layout, so a frame keeps those bytes
// once and a model's block is the frame around the model's own float data,
// with no serialized copy at all.
// DecodeResponseFLJobHead and DecodeResponseGetModelHead read such an
// answer's fields from its first bytes without the model.
//
// # Device side
//
// The SDK builds requests with BuildRequest* and reads responses with
// DecodeResponse*, which verify like the server's decoders and return a
// *RefusalError (errors.Is(err, ErrRefused)) for a plain-text body such as
// "The cluster is in safemode.".
package flmsg
