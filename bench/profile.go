package bench

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"time"
)

// ProfileRun is one client on some workloads, run while a profile records.
type ProfileRun struct {
	Transport string // TCP (default) or Mem
	Client    string
	Workloads []string
}

// Profiler runs ermc alone (no other client in the process meanwhile) for
// pprof.
type Profiler struct {
	Addr              string
	Duration          time.Duration // per workload
	CompressThreshold int
	Progress          io.Writer
}

// prepared is a client with warm workers for each workload of a run.
type prepared struct {
	name    string
	clients []Client
	cells   []*cell
}

func (p *Profiler) prepare(runs []ProfileRun) (*prepared, error) {
	pr := &prepared{}
	for _, run := range runs {
		mk, ok := MakerByName(run.Client)
		if !ok {
			return nil, fmt.Errorf("unknown client %q", run.Client)
		}
		byCompress := map[bool]Client{}
		tr := run.Transport
		if tr == "" {
			tr = TCP
		}
		var mem *MemTransport
		if tr == Mem {
			mem = NewMemTransport(MemInline)
		}
		for _, name := range run.Workloads {
			wl, ok := WorkloadByName(name)
			if !ok {
				return nil, fmt.Errorf("unknown workload %q", name)
			}
			cl, ok := byCompress[wl.Compress]
			if !ok {
				cfg := Config{Addr: p.Addr}
				if mem != nil {
					cfg.Addr, cfg.DialContext = MemAddr, mem.DialContext
				}
				if wl.Compress {
					cfg.CompressThreshold = p.CompressThreshold
				}
				var err error
				if cl, err = mk.New(cfg); err != nil {
					return nil, err
				}
				byCompress[wl.Compress] = cl
				pr.clients = append(pr.clients, cl)
			}
			c := &cell{transport: tr, client: run.Client, wl: wl}
			c.inst = wl.New(fmt.Sprintf("ep:%s:%s:", run.Client, wl.Name), wl.Goroutines)
			for g := 0; g < wl.Goroutines; g++ {
				c.workers = append(c.workers, cl.NewWorker())
			}
			if err := c.inst.Prepare(c.workers[0]); err != nil {
				return nil, fmt.Errorf("%s %s: prepare: %w", run.Client, name, err)
			}
			pr.cells = append(pr.cells, c)
		}
	}
	return pr, nil
}

func (pr *prepared) close() {
	for _, c := range pr.clients {
		c.Close()
	}
}

// run runs every cell for d, reporting each.
func (p *Profiler) run(pr *prepared, d time.Duration, what string) error {
	for _, c := range pr.cells {
		s := runFor(c.inst, c.workers, d)
		fmt.Fprintf(p.Progress, "profile %s %s %s %s %s ops/s\n", what, c.transport, c.wl.Name, c.client, Human(s.OpsPerSec()))
		if s.Errors > 0 {
			return fmt.Errorf("%s %s: %d errors, first: %v", c.client, c.wl.Name, s.Errors, s.FirstErr)
		}
	}
	return nil
}

// CPUProfile writes a CPU profile of runs to path. Connections are opened
// and warmed up before the profile starts.
func (p *Profiler) CPUProfile(path string, runs ...ProfileRun) error {
	pr, err := p.prepare(runs)
	if err != nil {
		return err
	}
	defer pr.close()
	if err := p.run(pr, p.Duration/10, "warm-up"); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err
	}
	err = p.run(pr, p.Duration, "cpu")
	pprof.StopCPUProfile()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// AllocProfile writes the process's allocation profile ("allocs") after
// running runs. It is only exact when runtime.MemProfileRate was set to 1
// before the process allocated anything (the ermcbench command re-executes
// itself for this), and it includes the one-time setup (clients,
// connections, buffers) as well as the steady state.
func (p *Profiler) AllocProfile(path string, runs ...ProfileRun) error {
	pr, err := p.prepare(runs)
	if err != nil {
		return err
	}
	defer pr.close()
	if err := p.run(pr, p.Duration, "allocs"); err != nil {
		return err
	}
	runtime.GC() // the profile is as of the last completed GC
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = pprof.Lookup("allocs").WriteTo(f, 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
