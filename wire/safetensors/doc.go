// Package safetensors encodes a flat model.Model as a safetensors file and
// decodes one back, strictly.
//
// # Format (as written by huggingface/safetensors, the reference implementation)
//
//	[8 bytes]  N, the header length, unsigned little-endian
//	[N bytes]  UTF-8 JSON object, starting with '{', padded with spaces (0x20)
//	           to a multiple of 8 bytes (the reference pads so that the data
//	           section starts 8-byte aligned)
//	[rest]     raw tensor data, little-endian, C order
//
// The JSON object maps each tensor name to
// {"dtype":"F32","shape":[...],"data_offsets":[begin,end]} (offsets relative
// to the start of the data section) and may hold "__metadata__", an object of
// string to string. We store fl_name, iteration and sha256 there.
//
// # Rules the encoder follows
//
//   - "__metadata__" first, then tensors in layout order, with contiguous data
//     offsets starting at 0 (the reference writes tensors sorted by dtype
//     alignment then name; readers accept any order, since only offsets place
//     data; Python's safetensors.safe_open / load_file read our files).
//   - Header padded with spaces to an 8-byte multiple, exactly as the
//     reference's serialize does.
//   - Only F32. Data written in little-endian byte order.
//
// # Rules the decoder enforces
//
// Every rule of the reference's validation, plus a few stricter ones:
//
//   - N ≤ MaxHeaderBytes (default 100,000,000, the reference's
//     MAX_HEADER_SIZE), checked before anything is allocated, and N must fit in
//     the input.
//   - The header is valid UTF-8, starts with '{', is one well-formed JSON
//     object followed only by whitespace.
//   - Stricter than the reference: duplicate keys, unknown keys inside a tensor
//     entry and non-string metadata values are errors.
//   - dtype must be "F32"; any other dtype is refused with an error naming it.
//   - Every dimension is ≥ 1 and the shape is non-empty (model.Layout cannot
//     hold scalars or empty tensors); element counts do not overflow.
//   - Sorted by begin offset, the tensors are contiguous from 0 (no gap, no
//     overlap), end - begin = 4 × elements, and the last end equals the size of
//     the data section exactly.
//   - Optionally (Options.RejectNonFinite) no NaN or ±Inf.
//   - Optionally (Options.Layout) names and shapes match an expected layout;
//     the data is then placed in that layout's order, whatever the file order.
//
// Without an expected layout the decoded model's layout lists the tensors in
// data-offset order.
package safetensors
