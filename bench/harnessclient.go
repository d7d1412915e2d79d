package bench

// HarnessClient is no client at all: every call returns at once, without
// a server. The open loop run with it measures the load generator alone
// (its workers' wake-ups on this machine at that rate), the floor under
// every real client's latency. It takes part in the latency runs only.
const HarnessClient = "harness alone"

var harnessMaker = Maker{HarnessClient, func(Config) (Client, error) { return harnessClient{}, nil }}

type harnessClient struct{}

func (harnessClient) NewWorker() Worker { return harnessWorker{} }
func (harnessClient) Close()            {}

// harnessWorker answers every call at once; a Get returns a value of the
// 100-byte workloads' size so a workload that checks lengths passes.
type harnessWorker struct{}

var harnessValue = make([]byte, 100)

func (harnessWorker) Get(string) ([]byte, error)          { return harnessValue, nil }
func (harnessWorker) Set(string, []byte) error            { return nil }
func (harnessWorker) GetMulti(keys []string) (int, error) { return len(keys), nil }
func (harnessWorker) SetInt(string, int64) error          { return nil }
func (harnessWorker) GetInt(string) (int64, error)        { return 0, nil }
func (harnessWorker) SetObject(string, any) error         { return nil }
func (harnessWorker) GetObject(string, any) error         { return nil }
