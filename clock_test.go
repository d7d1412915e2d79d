package ermc

import (
	"testing"
	"time"
)

// Deadlines are never earlier than asked, and move once per grain.
func TestDeadlineFrom(t *testing.T) {
	base := time.Date(2026, 11, 29, 3, 0, 0, 0, time.UTC)
	for _, off := range []time.Duration{0, 1, 999_999, time.Millisecond, time.Millisecond + 1, 1500 * time.Microsecond} {
		now := base.Add(off)
		dl := deadlineFrom(now, time.Second)
		if dl.Before(now.Add(time.Second)) {
			t.Errorf("from %v: %v is earlier than asked", off, dl.Sub(base))
		}
		if dl.Sub(now.Add(time.Second)) >= deadlineGrain {
			t.Errorf("from %v: %v is a grain or more later than asked", off, dl.Sub(base))
		}
		if dl.Truncate(deadlineGrain) != dl {
			t.Errorf("from %v: %v is not on the grain", off, dl.Sub(base))
		}
	}
	if a, b := deadlineFrom(base.Add(1), time.Second), deadlineFrom(base.Add(999_000), time.Second); !a.Equal(b) {
		t.Errorf("within one grain the deadline moved: %v, %v", a, b)
	}
	for _, d := range []time.Duration{1, 50 * time.Millisecond} {
		dl := deadlineFrom(base.Add(1234567), d)
		if late := dl.Sub(base.Add(1234567 + d)); late < 0 || late > d/100 {
			t.Errorf("Timeout %v: deadline %v off, want within 1%% after", d, late)
		}
	}
	if !deadlineAfter(0).IsZero() || !deadlineAfter(-1).IsZero() {
		t.Error("no Timeout must give no deadline")
	}
}
