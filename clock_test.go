package ermc

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Deadlines are never earlier than asked, and move once per grain.
func TestDeadlineFrom(t *testing.T) {
	base := time.Date(2026, 11, 29, 3, 0, 0, 0, time.UTC)
	for _, off := range []time.Duration{0, 1, 999_999, time.Millisecond, time.Millisecond + 1, 1500 * time.Microsecond} {
		now := base.Add(off)
		dl := deadlineFrom(now, time.Second)
		assert.False(t, dl.Before(now.Add(time.Second)), "from %v: %v is earlier than asked", off, dl.Sub(base))
		assert.Less(t, dl.Sub(now.Add(time.Second)), deadlineGrain, "from %v: %v is a grain or more later than asked", off, dl.Sub(base))
		assert.Equal(t, dl, dl.Truncate(deadlineGrain), "from %v: %v is not on the grain", off, dl.Sub(base))
	}
	a, b := deadlineFrom(base.Add(1), time.Second), deadlineFrom(base.Add(999_000), time.Second)
	assert.True(t, a.Equal(b), "within one grain the deadline moved: %v, %v", a, b)
	for _, d := range []time.Duration{1, 50 * time.Millisecond} {
		dl := deadlineFrom(base.Add(1234567), d)
		late := dl.Sub(base.Add(1234567 + d))
		assert.True(t, late >= 0 && late <= d/100, "Timeout %v: deadline %v off, want within 1%% after", d, late)
	}
	assert.True(t, deadlineAfter(0).IsZero(), "no Timeout must give no deadline")
	assert.True(t, deadlineAfter(-1).IsZero(), "no Timeout must give no deadline")
}
