//go:build !race

package lenet

const raceEnabled = false
