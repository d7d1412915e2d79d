package bench

import (
	"fmt"
	"strconv"
	"strings"
)

// Workload is one kind of operation the runner measures on every client.
type Workload struct {
	Name       string
	Goroutines int
	// Compress runs the workload on clients built with the lz4
	// CompressThreshold.
	Compress bool
	// OpsNote says what one op is, for the report.
	OpsNote string
	// New makes the keys and values of one client's run; prefix keeps
	// the keys of different clients and workloads apart.
	New func(prefix string, goroutines int) Instance
}

// Instance is a workload bound to its keys.
type Instance interface {
	// Prepare stores what Op reads.
	Prepare(w Worker) error
	// Op is one operation on goroutine g (0 <= g < Goroutines).
	Op(w Worker, g int) error
}

// The data of pyermc's own benchmark (benchmarks/bench.py): a 200-byte key,
// an integer, a pickled object and "wutwutwutwutwut" * 1024.
var (
	value100   = []byte(strings.Repeat("v", 100))
	value64KiB = makeValue(64 << 10)
	longKey    = strings.Repeat("a", 200)
	someValue  = []byte("some value")
	longString = []byte(strings.Repeat("wutwutwutwutwut", 1024)) // 15 KiB
)

// makeValue is n bytes that do not compress to nothing.
func makeValue(n int) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = 'a' + byte(x%26)
	}
	return b
}

// TestObject is the analogue of pyermc's pickled TestObject.
type TestObject struct {
	Thing       string `json:"thing"`
	ThingString string `json:"thing_string"`
	I           int    `json:"i"`
}

var testObject = TestObject{
	Thing:       "i am a thing!",
	ThingString: "i have a l" + strings.Repeat("o", 378) + "ngish string",
	I:           100,
}

// Workloads returns every workload, in report order.
func Workloads() []Workload {
	ws := []Workload{
		{Name: "Get100B/1g", Goroutines: 1, OpsNote: "Get of a 100-byte value", New: getInstance(value100)},
		{Name: "Get100B/64g", Goroutines: 64, OpsNote: "Get of a 100-byte value, 64 goroutines (one key each)", New: getInstance(value100)},
		{Name: "Set100B/1g", Goroutines: 1, OpsNote: "Set of a 100-byte value", New: setInstance(value100)},
		{Name: "Set100B/64g", Goroutines: 64, OpsNote: "Set of a 100-byte value, 64 goroutines (one key each)", New: setInstance(value100)},
		{Name: "GetMulti100/1g", Goroutines: 1, OpsNote: "GetMulti of 100 keys (100-byte values), all hits", New: getMultiInstance},
		{Name: "Get64KiB/1g", Goroutines: 1, OpsNote: "Get of a 64 KiB value", New: getInstance(value64KiB)},
	}
	for _, lz := range []bool{false, true} {
		suffix := ""
		if lz {
			suffix = "+lz4"
		}
		ws = append(ws,
			Workload{Name: "Key200B" + suffix + "/SetGet", Goroutines: 1, Compress: lz,
				OpsNote: "Set then Get of \"some value\" under a 200-byte key", New: longKeyInstance},
			Workload{Name: "Int" + suffix + "/SetGet", Goroutines: 1, Compress: lz,
				OpsNote: "SetInt then GetInt (gomemcache: decimal string, flag 2)", New: intInstance},
			Workload{Name: "Object" + suffix + "/SetGet", Goroutines: 1, Compress: lz,
				OpsNote: "SetObject then GetObject, JSON (gomemcache: json.Marshal+Set, Get+json.Unmarshal)", New: objectInstance},
			Workload{Name: "Str15KiB" + suffix + "/SetGet", Goroutines: 1, Compress: lz,
				OpsNote: "Set then Get of \"wutwutwutwutwut\"*1024", New: setGetInstance(longString)},
		)
	}
	return ws
}

// WorkloadByName returns the workload called name.
func WorkloadByName(name string) (Workload, bool) {
	for _, w := range Workloads() {
		if w.Name == name {
			return w, true
		}
	}
	return Workload{}, false
}

func perGoroutineKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = prefix + strconv.Itoa(i)
	}
	return keys
}

func checkLen(v []byte, want int) error {
	if len(v) != want {
		return fmt.Errorf("got %d bytes, want %d", len(v), want)
	}
	return nil
}

type getInst struct {
	keys  []string
	value []byte
}

func getInstance(value []byte) func(string, int) Instance {
	return func(prefix string, n int) Instance { return &getInst{perGoroutineKeys(prefix, n), value} }
}

func (in *getInst) Prepare(w Worker) error {
	for _, k := range in.keys {
		if err := w.Set(k, in.value); err != nil {
			return err
		}
	}
	return nil
}

func (in *getInst) Op(w Worker, g int) error {
	v, err := w.Get(in.keys[g])
	if err != nil {
		return err
	}
	return checkLen(v, len(in.value))
}

type setInst struct {
	keys  []string
	value []byte
}

func setInstance(value []byte) func(string, int) Instance {
	return func(prefix string, n int) Instance { return &setInst{perGoroutineKeys(prefix, n), value} }
}

func (in *setInst) Prepare(Worker) error { return nil }

func (in *setInst) Op(w Worker, g int) error { return w.Set(in.keys[g], in.value) }

type getMultiInst struct{ keys []string }

func getMultiInstance(prefix string, _ int) Instance {
	return &getMultiInst{perGoroutineKeys(prefix, 100)}
}

func (in *getMultiInst) Prepare(w Worker) error {
	for _, k := range in.keys {
		if err := w.Set(k, value100); err != nil {
			return err
		}
	}
	return nil
}

func (in *getMultiInst) Op(w Worker, _ int) error {
	n, err := w.GetMulti(in.keys)
	if err == nil && n != len(in.keys) {
		err = fmt.Errorf("GetMulti: %d hits of %d", n, len(in.keys))
	}
	return err
}

// setGetInst: one op is a Set and a Get of the same value.
type setGetInst struct {
	keys  []string
	value []byte
}

func setGetInstance(value []byte) func(string, int) Instance {
	return func(prefix string, n int) Instance { return &setGetInst{perGoroutineKeys(prefix, n), value} }
}

func longKeyInstance(prefix string, n int) Instance {
	keys := perGoroutineKeys(prefix, n)
	for i := range keys {
		keys[i] += ":" + longKey
	}
	return &setGetInst{keys, someValue}
}

func (in *setGetInst) Prepare(Worker) error { return nil }

func (in *setGetInst) Op(w Worker, g int) error {
	if err := w.Set(in.keys[g], in.value); err != nil {
		return err
	}
	v, err := w.Get(in.keys[g])
	if err != nil {
		return err
	}
	return checkLen(v, len(in.value))
}

type intInst struct{ keys []string }

func intInstance(prefix string, n int) Instance { return &intInst{perGoroutineKeys(prefix, n)} }

func (in *intInst) Prepare(Worker) error { return nil }

func (in *intInst) Op(w Worker, g int) error {
	if err := w.SetInt(in.keys[g], 1); err != nil {
		return err
	}
	n, err := w.GetInt(in.keys[g])
	if err == nil && n != 1 {
		err = fmt.Errorf("GetInt: %d, want 1", n)
	}
	return err
}

type objectInst struct {
	keys []string
	outs []TestObject // per goroutine
}

func objectInstance(prefix string, n int) Instance {
	return &objectInst{perGoroutineKeys(prefix, n), make([]TestObject, n)}
}

func (in *objectInst) Prepare(Worker) error { return nil }

func (in *objectInst) Op(w Worker, g int) error {
	if err := w.SetObject(in.keys[g], &testObject); err != nil {
		return err
	}
	out := &in.outs[g]
	*out = TestObject{}
	if err := w.GetObject(in.keys[g], out); err != nil {
		return err
	}
	if out.I != testObject.I || len(out.ThingString) != len(testObject.ThingString) {
		return fmt.Errorf("GetObject: got %+v", *out)
	}
	return nil
}
