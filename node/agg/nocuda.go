//go:build !cuda

package agg

const cudaBuilt = false
