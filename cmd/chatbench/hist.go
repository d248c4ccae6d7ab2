package main

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// histogram is an HDR-like latency histogram: values in microseconds,
// bucketed by power of two with 32 linear sub-buckets each, so that any
// recorded value is known within 1/32 (3%). Recording is one atomic add,
// safe from any number of goroutines.
const (
	histSubBits = 5
	histSub     = 1 << histSubBits
	histBuckets = (64 - histSubBits + 1) * histSub
)

type histogram struct {
	counts [histBuckets]atomic.Uint64
	total  atomic.Uint64
	max    atomic.Int64 // microseconds
}

func histIndex(v uint64) int {
	if v < histSub {
		return int(v)
	}
	e := bits.Len64(v) - histSubBits // >= 1
	return e*histSub + int(v>>(e-1)) - histSub
}

// histLow returns the smallest value of bucket i; histHigh the largest.
func histLow(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	e := i / histSub
	sub := uint64(i%histSub) + histSub
	return sub << (e - 1)
}

func histHigh(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	e := i / histSub
	return histLow(i) + (uint64(1) << (e - 1)) - 1
}

// record adds one latency. Negative values (clock steps) count as zero.
func (h *histogram) record(d time.Duration) {
	us := int64(d / time.Microsecond)
	if us < 0 {
		us = 0
	}
	h.counts[histIndex(uint64(us))].Add(1)
	h.total.Add(1)
	for {
		m := h.max.Load()
		if us <= m || h.max.CompareAndSwap(m, us) {
			break
		}
	}
}

func (h *histogram) count() uint64 { return h.total.Load() }

// quantile returns the value at quantile q (0..1) in milliseconds: the
// middle of the bucket that holds it, or NaN for an empty histogram.
func (h *histogram) quantile(q float64) float64 {
	n := h.total.Load()
	if n == 0 {
		return math.NaN()
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			mid := (float64(histLow(i)) + float64(histHigh(i))) / 2
			return math.Min(mid, float64(h.max.Load())) / 1000
		}
	}
	return float64(h.max.Load()) / 1000
}

// maxMS is the largest recorded value in milliseconds.
func (h *histogram) maxMS() float64 {
	if h.total.Load() == 0 {
		return math.NaN()
	}
	return float64(h.max.Load()) / 1000
}

// merge adds o's counts into h.
func (h *histogram) merge(o *histogram) {
	for i := range o.counts {
		if c := o.counts[i].Load(); c > 0 {
			h.counts[i].Add(c)
		}
	}
	h.total.Add(o.total.Load())
	for {
		m, om := h.max.Load(), o.max.Load()
		if om <= m || h.max.CompareAndSwap(m, om) {
			break
		}
	}
}
