// Command ermcbench compares ermc's drivers with gomemcache on the same
// memcached and over an in-memory responder, alternating the clients round
// by round, and writes a markdown table of medians, an SVG chart, and CPU
// and allocation profiles of ermc. `make bench` runs it; see
// bench/README.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"time"

	"github.com/ermc-go/ermc/bench"
)

// allocChildEnv marks the re-executed process that records the allocation
// profile: it must set MemProfileRate before anything is allocated.
const allocChildEnv = "ERMCBENCH_ALLOC_PROFILE_CHILD"

func init() {
	if os.Getenv(allocChildEnv) == "1" {
		runtime.MemProfileRate = 1
	}
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
		fatalf("%s=%q: not an integer", name, v)
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
		fatalf("%s=%q: not a duration (e.g. 500ms)", name, v)
	}
	return def
}

// stopServer stops the memcached ermcbench started, if any.
var stopServer = func() {}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "ermcbench: "+format+"\n", args...)
	stopServer() // os.Exit skips deferred calls
	os.Exit(1)
}

// shellArgs is the command line's arguments as a shell would need them.
func shellArgs() string {
	var out []string
	for _, a := range os.Args[1:] {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`*?[]{}()<>|&;#~!") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out = append(out, a)
	}
	return strings.Join(out, " ")
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

var (
	addr         = flag.String("addr", os.Getenv("ERMC_BENCH_ADDR"), "memcached to use (env ERMC_BENCH_ADDR); empty: start a throwaway one on a free loopback port")
	rounds       = flag.Int("rounds", envInt("BENCH_ROUNDS", 3), "rounds; the report shows medians over them (env BENCH_ROUNDS)")
	duration     = flag.Duration("time", envDuration("BENCH_TIME", 500*time.Millisecond), "measured time per client, workload and round (env BENCH_TIME)")
	warmup       = flag.Duration("warmup", envDuration("BENCH_WARMUP", 50*time.Millisecond), "unmeasured warm-up before each measurement (env BENCH_WARMUP)")
	threshold    = flag.Int("lz4-threshold", envInt("BENCH_LZ4_THRESHOLD", 100), "CompressThreshold of the +lz4 workloads (env BENCH_LZ4_THRESHOLD)")
	transports   = flag.String("transports", env("BENCH_TRANSPORTS", "tcp,mem"), "transports to compare: tcp, mem (env BENCH_TRANSPORTS)")
	workloads    = flag.String("workloads", os.Getenv("BENCH_WORKLOADS"), "comma-separated workloads; empty: all (env BENCH_WORKLOADS)")
	memMode      = flag.String("mem-mode", env("BENCH_MEM_MODE", bench.MemInline), "in-memory transport: inline, goroutine or pipe (env BENCH_MEM_MODE)")
	out          = flag.String("out", "", "write the markdown report here as well as to stdout")
	chart        = flag.String("chart", "", "write the SVG chart here (and a PNG beside it when rsvg-convert is installed)")
	profiles     = flag.String("profiles", "", "write ermc's CPU and allocation profiles (and SVG call graphs) into this directory")
	profileTime  = flag.Duration("profile-time", envDuration("BENCH_PROFILE_TIME", 3*time.Second), "run time per workload of the CPU profiles (env BENCH_PROFILE_TIME)")
	allocTime    = flag.Duration("alloc-profile-time", envDuration("BENCH_ALLOC_PROFILE_TIME", 200*time.Millisecond), "run time per workload of the allocation profile")
	onlyProfiles = flag.Bool("only-profiles", false, "write the profiles only, no comparison")
	latency      = flag.Bool("latency", env("BENCH_LATENCY", "1") != "0", "after the throughput table, measure open-loop latency at fixed offered rates (env BENCH_LATENCY=0 skips it)")
	latencyOnly  = flag.Bool("latency-only", false, "measure only the open-loop latency (gomemcache's capacity first), no throughput table, no profiles")
	latTime      = flag.Duration("latency-time", envDuration("BENCH_LATENCY_TIME", time.Second), "measured time per client, rate and round of the latency runs (env BENCH_LATENCY_TIME)")
	latWarmup    = flag.Duration("latency-warmup", envDuration("BENCH_LATENCY_WARMUP", 200*time.Millisecond), "unmeasured warm-up at the same rate before each latency measurement (env BENCH_LATENCY_WARMUP)")
	latRounds    = flag.Int("latency-rounds", envInt("BENCH_LATENCY_ROUNDS", 0), "rounds of the latency runs; 0: as -rounds (env BENCH_LATENCY_ROUNDS)")
	latLoads     = flag.String("latency-loads", env("BENCH_LATENCY_LOADS", ""), "offered rates as fractions of gomemcache's closed-loop ops/s, e.g. 0.25,0.5,1,3 (env BENCH_LATENCY_LOADS)")
	latCapacity  = flag.Float64("latency-capacity", 0, "take this as gomemcache's closed-loop ops/s on every latency workload instead of measuring it, for offered rates that are the same in every run (e.g. 100000 with -latency-loads 0.4 offers 40k/s)")
	latClients   = flag.String("latency-clients", env("BENCH_LATENCY_CLIENTS", ""), "clients of the latency runs; empty: all; name@n gives a pooled client n connections (env BENCH_LATENCY_CLIENTS)")
	latWorkloads = flag.String("latency-workloads", env("BENCH_LATENCY_WORKLOADS", ""), "workloads of the latency runs; empty: Get100B/64g,Set100B/64g (env BENCH_LATENCY_WORKLOADS)")
	readme       = flag.String("readme", "", "replace the latency block of this README (between its markers) with the latency tables")
	latChart     = flag.String("latency-chart", "", "write the latency chart (SVG, and PNG beside it) here")
	traceFile    = flag.String("trace", "", "write an execution trace of the comparison here (go tool trace; keep the run short)")
	cpuFile      = flag.String("cpuprofile", "", "write a CPU profile of the comparison (every client) here")
	command      = flag.String("cmd", "", "how this run was started, for the reports (e.g. \"make bench\")")
	allocChild   = flag.String("alloc-child", "", "internal: write the allocation profile to this file and exit")
	stampedeTime = flag.Duration("stampede-time", envDuration("BENCH_STAMPEDE_TIME", 3*time.Second), "run time per client of the stampede scenario; 0: skip it (env BENCH_STAMPEDE_TIME)")
	onlyStampede = flag.Bool("only-stampede", false, "run the stampede scenario only and print its table")
)

// The profiled runs: ermc only, the main workloads.
var (
	cpuProfiles = []struct {
		file string
		what string
		runs []bench.ProfileRun
	}{
		{"cpu-ultra-64g", "ermc-ultra over loopback TCP, Get100B/64g then Set100B/64g",
			[]bench.ProfileRun{{Transport: bench.TCP, Client: "ermc-ultra", Workloads: []string{"Get100B/64g", "Set100B/64g"}}}},
		{"cpu-text-1g", "ermc-text over loopback TCP, Get100B/1g then Set100B/1g",
			[]bench.ProfileRun{{Transport: bench.TCP, Client: "ermc-text", Workloads: []string{"Get100B/1g", "Set100B/1g"}}}},
		// The same over the in-memory responder: no syscalls, so the
		// client's own CPU cost is most of the profile.
		{"cpu-ultra-64g-mem", "ermc-ultra over the in-memory responder, Get100B/64g then Set100B/64g",
			[]bench.ProfileRun{{Transport: bench.Mem, Client: "ermc-ultra", Workloads: []string{"Get100B/64g", "Set100B/64g"}}}},
		{"cpu-text-1g-mem", "ermc-text over the in-memory responder, Get100B/1g then Set100B/1g",
			[]bench.ProfileRun{{Transport: bench.Mem, Client: "ermc-text", Workloads: []string{"Get100B/1g", "Set100B/1g"}}}},
	}
	allocWorkloads = []string{"Get100B/1g", "Get100B/64g", "Set100B/1g", "Set100B/64g", "GetMulti100/1g", "Get64KiB/1g",
		"Key200B/SetGet", "Int/SetGet", "Object/SetGet", "Str15KiB/SetGet", "Str15KiB+lz4/SetGet", "Object+lz4/SetGet"}
	allocClients = []string{"ermc-text", "ermc-binary", "ermc-ultra"}
)

func main() {
	flag.Parse()
	if *allocChild != "" {
		runAllocChild()
		return
	}
	began := time.Now()
	if *command == "" {
		*command = "go run ./cmd/ermcbench " + shellArgs()
	}
	server := "the memcached at " + *addr + " (-addr or ERMC_BENCH_ADDR)"
	if *addr == "" {
		a, stop, err := bench.StartMemcached()
		if err != nil {
			fatalf("%v", err)
		}
		stopServer = stop
		defer stop()
		*addr = a
		server = "a throwaway memcached it started on " + a
		fmt.Fprintf(os.Stderr, "started memcached on %s\n", a)
	}
	m := bench.DescribeMachine(*addr)
	fmt.Fprintf(os.Stderr, "machine: %s\n", m)

	if *onlyStampede {
		fmt.Println(stampede().Markdown())
		return
	}
	if *onlyTracer {
		printTracerOnly()
		return
	}
	if !*onlyProfiles {
		stop := startTracing()
		compare(m)
		stop()
	}
	if *profiles != "" && !*latencyOnly {
		writeProfiles(m, server)
	}
	fmt.Fprintf(os.Stderr, "ermcbench done in %s\n", time.Since(began).Round(time.Second))
}

func compare(m bench.Machine) {
	var (
		md   string
		caps map[string]float64
	)
	if !*latencyOnly {
		opts := roundOptions()
		opts.Addr, opts.Transports, opts.Workloads = *addr, splitList(*transports), splitList(*workloads)
		rep, err := bench.Run(opts)
		if err != nil {
			fatalf("%v", err)
		}
		if *stampedeTime > 0 {
			rep.Stampede = stampede()
		}
		caps = rep.Capacities()
		writeChart(*chart, rep.Chart(m))
		md = rep.Markdown(m, *command, chartRef(*chart))
	} else {
		md = bench.LatencyHeader(m, *command)
	}
	if *latency || *latencyOnly {
		lr := *latRounds
		if lr <= 0 {
			lr = *rounds
		}
		var loads []float64
		for _, f := range splitList(*latLoads) {
			x, err := strconv.ParseFloat(f, 64)
			if err != nil || x <= 0 {
				fatalf("-latency-loads: %q is not a positive fraction", f)
			}
			loads = append(loads, x)
		}
		if *latCapacity > 0 {
			caps = map[string]float64{}
			for _, w := range bench.LatencyWorkloads(splitList(*latWorkloads)) {
				caps[w] = *latCapacity
			}
		}
		lat, err := bench.RunLatency(bench.LatencyOptions{
			Addr:          *addr,
			Clients:       splitList(*latClients),
			Workloads:     splitList(*latWorkloads),
			Loads:         loads,
			Capacity:      caps,
			CapacityGiven: *latCapacity > 0,
			Rounds:        lr,
			Duration:      *latTime,
			Warmup:        *latWarmup,
			Progress:      os.Stderr,
		})
		if err != nil {
			fatalf("%v", err)
		}
		writeChart(*latChart, lat.Chart(m))
		md += "\n" + lat.Markdown(chartRef(*latChart))
		if *readme != "" {
			updateReadme(lat, m)
		}
	}
	if !*latencyOnly {
		md += tracerSection()
	}
	fmt.Println(md)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
			fatalf("%v", err)
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", *out)
	}
}

// stampede runs the stampede scenario (bench/stampede.go).
func stampede() *bench.StampedeReport {
	st, err := bench.RunStampede(bench.StampedeOptions{Addr: *addr, Duration: *stampedeTime, Progress: os.Stderr})
	if err != nil {
		fatalf("%v", err)
	}
	return st
}

// startTracing starts the -trace and -cpuprofile recordings, if asked
// for, and returns what stops them.
func startTracing() (stop func()) {
	var files []*os.File
	create := func(path string) *os.File {
		f, err := os.Create(path)
		if err != nil {
			fatalf("%v", err)
		}
		files = append(files, f)
		return f
	}
	if *traceFile != "" {
		if err := trace.Start(create(*traceFile)); err != nil {
			fatalf("trace: %v", err)
		}
	}
	if *cpuFile != "" {
		if err := pprof.StartCPUProfile(create(*cpuFile)); err != nil {
			fatalf("cpu profile: %v", err)
		}
	}
	return func() {
		if *traceFile != "" {
			trace.Stop()
		}
		if *cpuFile != "" {
			pprof.StopCPUProfile()
		}
		for _, f := range files {
			if err := f.Close(); err != nil {
				fatalf("%v", err)
			}
			fmt.Fprintf(os.Stderr, "wrote %s\n", f.Name())
		}
	}
}

// updateReadme writes the latency tables into the -readme file, between
// its markers; the chart is linked relative to it.
func updateReadme(lat *bench.LatencyReport, m bench.Machine) {
	doc, err := os.ReadFile(*readme)
	if err != nil {
		fatalf("%v", err)
	}
	chart := ""
	if *latChart != "" {
		chart = relPath(filepath.Dir(*readme), *latChart)
	}
	s, ok := bench.ReplaceBlock(string(doc), bench.ReadmeBegin, bench.ReadmeEnd, lat.ReadmeBlock(m, chart))
	if !ok {
		fmt.Fprintf(os.Stderr, "%s has no %q ... %q block: not updated\n", *readme, bench.ReadmeBegin, bench.ReadmeEnd)
		return
	}
	if err := os.WriteFile(*readme, []byte(s), 0o644); err != nil {
		fatalf("%v", err)
	}
	fmt.Fprintf(os.Stderr, "wrote the latency block of %s\n", *readme)
}

// chartRef is how the report (-out) links to a chart file.
func chartRef(path string) string {
	if path == "" || *out == "" {
		return ""
	}
	return relPath(filepath.Dir(*out), path)
}

// relPath is path as a link from the directory dir: both may be relative
// to the working directory ("../README.md" links to "bench/latency.svg").
func relPath(dir, path string) string {
	ad, err1 := filepath.Abs(dir)
	ap, err2 := filepath.Abs(path)
	if err1 != nil || err2 != nil {
		return ""
	}
	rel, err := filepath.Rel(ad, ap)
	if err != nil {
		return ""
	}
	return filepath.ToSlash(rel)
}

// writeChart writes an SVG chart to path, and a PNG beside it when
// rsvg-convert is installed; nothing when path is empty.
func writeChart(path string, svg []byte) {
	if path == "" {
		return
	}
	if err := os.WriteFile(path, svg, 0o644); err != nil {
		fatalf("%v", err)
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", path)
	png := strings.TrimSuffix(path, ".svg") + ".png"
	if png == path {
		return
	}
	conv, err := exec.LookPath("rsvg-convert")
	if err != nil {
		fmt.Fprintln(os.Stderr, "no PNG chart: rsvg-convert (librsvg2-bin) is not installed")
		return
	}
	if b, err := exec.Command(conv, "-o", png, path).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "rsvg-convert: %v %s\n", err, b)
		return
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", png)
}

func writeProfiles(m bench.Machine, server string) {
	dir := *profiles
	loadBefore := bench.LoadAvg()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fatalf("%v", err)
	}
	p := &bench.Profiler{Addr: *addr, Duration: *profileTime, CompressThreshold: *threshold, Progress: os.Stderr}
	for _, cp := range cpuProfiles {
		path := filepath.Join(dir, cp.file+".pprof")
		if err := p.CPUProfile(path, cp.runs...); err != nil {
			fatalf("cpu profile %s: %v", path, err)
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", path)
	}

	// The allocation profile comes from a fresh process whose
	// MemProfileRate is 1 from its first allocation on.
	allocPath := filepath.Join(dir, "allocs.pprof")
	self, err := os.Executable()
	if err != nil {
		fatalf("%v", err)
	}
	child := exec.Command(self, "-alloc-child", allocPath, "-addr", *addr,
		"-alloc-profile-time", allocTime.String(), "-lz4-threshold", strconv.Itoa(*threshold))
	child.Env = append(os.Environ(), allocChildEnv+"=1")
	child.Stdout, child.Stderr = os.Stderr, os.Stderr
	if err := child.Run(); err != nil {
		fatalf("allocation profile: %v", err)
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", allocPath)

	loadAfter := bench.LoadAvg()
	svgs := renderSVGs(dir)
	writeProfilesReadme(dir, m, server, svgs, loadBefore, loadAfter)
}

func runAllocChild() {
	p := &bench.Profiler{Addr: *addr, Duration: *allocTime, CompressThreshold: *threshold, Progress: os.Stderr}
	var runs []bench.ProfileRun
	for _, c := range allocClients {
		runs = append(runs, bench.ProfileRun{Client: c, Workloads: allocWorkloads})
	}
	if err := p.AllocProfile(*allocChild, runs...); err != nil {
		fatalf("%v", err)
	}
}

// svgSpec is one call graph rendered from a profile.
type svgSpec struct{ profile, svg, extra, what string }

func renderSVGs(dir string) []svgSpec {
	var specs []svgSpec
	for _, cp := range cpuProfiles {
		specs = append(specs, svgSpec{cp.file + ".pprof", cp.file + ".svg", "", "CPU call graph"})
	}
	specs = append(specs,
		svgSpec{"allocs.pprof", "allocs-space.svg", "-sample_index=alloc_space", "bytes allocated"},
		svgSpec{"allocs.pprof", "allocs-objects.svg", "-sample_index=alloc_objects", "objects allocated"})
	if _, err := exec.LookPath("dot"); err != nil {
		fmt.Fprintln(os.Stderr, "no SVG call graphs: graphviz (dot) is not installed; make bench installs it")
		return nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	var done []svgSpec
	for _, s := range specs {
		args := []string{"tool", "pprof", "-svg", "-output", filepath.Join(dir, s.svg)}
		if s.extra != "" {
			args = append(args, s.extra)
		}
		args = append(args, filepath.Join(dir, s.profile))
		if b, err := exec.Command(goBin, args...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go %s: %v\n%s", strings.Join(args, " "), err, b)
			continue
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", filepath.Join(dir, s.svg))
		done = append(done, s)
	}
	return done
}

func writeProfilesReadme(dir string, m bench.Machine, server string, svgs []svgSpec, loadBefore, loadAfter string) {
	var b strings.Builder
	b.WriteString("# Profiles of ermc\n\n")
	b.WriteString("Generated files: do not edit; regenerate with `make profile` (profiles only) or `make bench` (profiles, table and chart).\n\n")
	fmt.Fprintf(&b, "These files were produced by `%s` on %s, which ran\n\n", *command, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "    cd bench && go run ./cmd/ermcbench %s\n\n", shellArgs())
	fmt.Fprintf(&b, "against %s, on this machine:\n\n", server)
	fmt.Fprintf(&b, "- `nproc`: %d (GOMAXPROCS %d)\n", m.NumCPU, m.GOMAXPROCS)
	fmt.Fprintf(&b, "- CPU (/proc/cpuinfo model name): %s\n", m.CPUModel)
	fmt.Fprintf(&b, "- Go: %s %s\n", m.GoVersion, m.OSArch)
	if m.Kernel != "" {
		fmt.Fprintf(&b, "- Linux: %s\n", m.Kernel)
	}
	fmt.Fprintf(&b, "- memcached: %s\n", m.Memcached)
	if loadBefore != "" {
		fmt.Fprintf(&b, "- load average (1, 5, 15 min) when profiling began: %s; when it ended: %s\n", loadBefore, loadAfter)
	}
	b.WriteString("\n")
	b.WriteString("Only ermc runs in the process while a profile records (no gomemcache), after a warm-up. ")
	b.WriteString("Over loopback TCP memcached is a separate process and not in the profiles, and the kernel's share shows as syscalls; ")
	b.WriteString("the `-mem` profiles use the in-memory responder (bench/memconn.go), whose parsing runs on the client's goroutines and shows as `bench.(*responder).feed`.\n\n")
	b.WriteString("| file | what |\n|---|---|\n")
	for _, cp := range cpuProfiles {
		fmt.Fprintf(&b, "| `%s.pprof` | CPU profile: %s, %v each |\n", cp.file, cp.what, *profileTime)
	}
	fmt.Fprintf(&b, "| `allocs.pprof` | allocation profile (MemProfileRate 1: every allocation) of %s over loopback TCP on %s, %v each; it includes one-time setup (clients, connections, buffers) as well as the steady state |\n",
		strings.Join(allocClients, ", "), strings.Join(allocWorkloads, ", "), *allocTime)
	for _, s := range svgs {
		ex := ""
		if s.extra != "" {
			ex = " " + s.extra
		}
		fmt.Fprintf(&b, "| `%s` | %s of `%s`: `go tool pprof -svg%s` |\n", s.svg, s.what, s.profile, ex)
	}
	b.WriteString("\nExplore them with `go tool pprof -http=: profiles/cpu-ultra-64g.pprof`, or `go tool pprof -top -sample_index=alloc_objects profiles/allocs.pprof`.\n")
	b.WriteString("A load average near or above `nproc` means other work shared the CPUs: the profiles still show where ermc spends its time, but not how fast it is.\n")
	b.WriteString("\n`latency/` holds the profiles and traces of the pooled drivers' latency investigation; its own README (not generated) says how they were made.\n")
	path := filepath.Join(dir, "README.md")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		fatalf("%v", err)
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", path)
}

// roundOptions are the flags every closed-loop comparison shares: rounds,
// their timing, compression and the in-memory transport's mode.
func roundOptions() bench.Options {
	return bench.Options{
		Rounds:            *rounds,
		Duration:          *duration,
		Warmup:            *warmup,
		CompressThreshold: *threshold,
		MemMode:           *memMode,
		Progress:          os.Stderr,
	}
}
