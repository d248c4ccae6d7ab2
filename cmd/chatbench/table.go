package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
)

func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case math.Abs(v) >= 1000:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.1f", v)
	case math.Abs(v) >= 1:
		return fmt.Sprintf("%.2f", v)
	case v == 0:
		return "0"
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// printTable writes results for people.
func printTable(w io.Writer, results []*Result) {
	for _, r := range results {
		status := "valid"
		if !r.Valid {
			status = "INVALID: " + r.Invalid
		}
		if r.Bound != "" {
			status += ", bound by " + r.Bound
		}
		fmt.Fprintf(w, "\n%s %s, %s (protocol %s): %s\n", r.Workload, r.Case, r.Label, r.Protocol, status)
		if len(r.Steps) > 0 {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "step\tkind\toffered/s\tdelivered/s\tdelivery %\tp50 ms\tp99 ms\tp99.9 ms\tmax ms\tserver CPU\tCPU s/1M\tgen CPU\t dup\t reord\t")
			for _, s := range r.Steps {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.3f\t%s\t%s\t%s\t%s\t%.0f%%\t%s\t%.0f%%\t%d\t%d\t %s\n",
					s.Step, s.Kind, fmtNum(s.OfferedRate), fmtNum(s.Rate), 100*s.DeliveryRatio,
					fmtNum(s.P50), fmtNum(s.P99), fmtNum(s.P999), fmtNum(s.Max), 100*s.ServerUtil,
					fmtNum(s.CPUPerM), 100*s.GenLoad, s.Dups, s.Reorders, s.Why)
			}
			tw.Flush()
		}
		keys := make([]string, 0, len(r.Metrics))
		for k := range r.Metrics {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s=%s", k, fmtNum(r.Metrics[k])))
		}
		fmt.Fprintf(w, "  %s\n", strings.Join(parts, "  "))
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
	}
}
