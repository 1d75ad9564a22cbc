package loadstat

import (
	"errors"
	"testing"
	"time"
)

func TestSummary(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name              string
		adds              []time.Duration // negative: a failure
		wantOK, wantErrs  int
		wantP50, wantP100 time.Duration
	}{
		{name: "empty"},
		{name: "one", adds: []time.Duration{5}, wantOK: 1, wantP50: 5, wantP100: 5},
		{name: "unsorted with failure", adds: []time.Duration{30, -1, 10, 20, 40}, wantOK: 4, wantErrs: 1, wantP50: 20, wantP100: 40},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r Recorder
			for _, d := range tc.adds {
				if d < 0 {
					r.Add(0, 7, boom)
					continue
				}
				r.Add(d, 1, nil)
			}
			s := r.Summary()
			if s.OK != tc.wantOK || s.Errors != tc.wantErrs {
				t.Fatalf("ok=%d errors=%d, want %d and %d", s.OK, s.Errors, tc.wantOK, tc.wantErrs)
			}
			if tc.wantErrs > 0 && !errors.Is(s.FirstErr, boom) {
				t.Fatalf("first error %v, want %v", s.FirstErr, boom)
			}
			if got := s.Pct(50); got != tc.wantP50 {
				t.Errorf("p50 = %v, want %v", got, tc.wantP50)
			}
			if got := s.Pct(100); got != tc.wantP100 {
				t.Errorf("p100 = %v, want %v", got, tc.wantP100)
			}
		})
	}
}
