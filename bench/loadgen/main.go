// Command loadgen is tykworker's closed-loop load generator.
//
// It drives a coprocess.Dispatcher server the way a Tyk gateway does: grpc-go, a
// "unix:///path" target, insecure credentials, large message limits and, by default,
// ONE connection multiplexing every call. Payloads are pre-built coprocess.Object bytes
// read from a file and sent through a raw-bytes codec, so no generated Go protobuf code is
// involved and the client spends almost nothing per call.
//
// Modes:
//
//	-mode grpc  unary calls on -method over -conns connections (default 1), -c goroutines
//	-mode raw   tykworker's raw frame protocol: one Unix stream connection per goroutine,
//	            16-byte header ">2sBBIQ" (magic "TW", version 1, kind, length, call id)
//
// Closed loop: each of the -c goroutines sends a call, waits for its reply, and repeats,
// for -duration (after -warmup) or until -n calls have been made. The result is one JSON
// object on stdout (or -out): calls, errors by code, calls/s, latency percentiles in µs,
// reply checks and the client's own CPU time.
//
// -wait D turns it into a readiness probe: one call is retried until it succeeds or D
// passes; exit status 0 when it succeeded.
//
// -serve PATH runs a grpc-go echo server (any unary method answers with the request bytes)
// on a Unix socket, and -serve-raw PATH a raw-frame echo server: together they measure the
// client's own ceiling on a machine ("is the load generator the bottleneck?").
package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// ---------------------------------------------------------------------------------------
// Raw-bytes codec: the request is a *[]byte sent as is; the reply is inspected in place
// (length and optional substring check) without copying or decoding it.

type reply struct {
	n      int
	expect []byte
	ok     bool
}

type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	p, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return *p, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	if p, ok := v.(*[]byte); ok { // echo server side: keep a copy
		*p = append((*p)[:0], data...)
		return nil
	}
	r, ok := v.(*reply)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	r.n = len(data)
	r.ok = len(data) > 0 && (r.expect == nil || bytes.Contains(data, r.expect))
	return nil
}

// Name is "proto" so that the server sees an ordinary protobuf call; with ForceCodec the
// content-type stays "application/grpc" like the gateway's.
func (rawCodec) Name() string { return "proto" }

// ---------------------------------------------------------------------------------------
// Raw frame protocol (tykworker/protocol.py).

const (
	frameHeaderSize = 16
	kindReply       = 3
	kindError       = 4
)

func encodeFrame(kind byte, callID uint64, payload []byte) []byte {
	b := make([]byte, frameHeaderSize+len(payload))
	b[0], b[1], b[2], b[3] = 'T', 'W', 1, kind
	binary.BigEndian.PutUint32(b[4:8], uint32(len(payload)))
	binary.BigEndian.PutUint64(b[8:16], callID)
	copy(b[frameHeaderSize:], payload)
	return b
}

type rawConn struct {
	path    string
	conn    net.Conn
	frame   []byte // pre-built request frame; call id patched per call
	hdr     [frameHeaderSize]byte
	buf     []byte
	timeout time.Duration
}

func (rc *rawConn) call(callID uint64, expect []byte) (string, int, bool) {
	if rc.conn == nil {
		c, err := net.Dial("unix", rc.path)
		if err != nil {
			return "connect", 0, false
		}
		rc.conn = c
	}
	fail := func(code string) (string, int, bool) {
		_ = rc.conn.Close()
		rc.conn = nil
		return code, 0, false
	}
	if rc.timeout > 0 {
		_ = rc.conn.SetDeadline(time.Now().Add(rc.timeout))
	}
	binary.BigEndian.PutUint64(rc.frame[8:16], callID)
	if _, err := rc.conn.Write(rc.frame); err != nil {
		return fail(ioCode(err))
	}
	if _, err := io.ReadFull(rc.conn, rc.hdr[:]); err != nil {
		return fail(ioCode(err))
	}
	if rc.hdr[0] != 'T' || rc.hdr[1] != 'W' || rc.hdr[2] != 1 {
		return fail("bad_header")
	}
	n := int(binary.BigEndian.Uint32(rc.hdr[4:8]))
	if cap(rc.buf) < n {
		rc.buf = make([]byte, n)
	}
	rc.buf = rc.buf[:n]
	if _, err := io.ReadFull(rc.conn, rc.buf); err != nil {
		return fail(ioCode(err))
	}
	if binary.BigEndian.Uint64(rc.hdr[8:16]) != callID {
		return fail("bad_call_id")
	}
	switch rc.hdr[3] {
	case kindReply:
	case kindError:
		return "frame_ERROR", n, false
	default:
		return fail(fmt.Sprintf("frame_kind_%d", rc.hdr[3]))
	}
	ok := n > 0 && (expect == nil || bytes.Contains(rc.buf, expect))
	return "", n, ok
}

func ioCode(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "eof"
	}
	return "io"
}

// ---------------------------------------------------------------------------------------

type config struct {
	mode      string
	target    string
	method    string
	payload   []byte
	conc      int
	conns     int
	duration  time.Duration
	warmup    time.Duration
	n         int64
	timeout   time.Duration
	grace     time.Duration
	expect    []byte
	maxMsg    int
	frameKind int
	trace     string // "", "w3c" or "b3": a new trace context in each call's metadata
}

type workerStats struct {
	lat       []int64 // ns, measured calls only
	errs      map[string]int64
	nonEmpty  int64
	bad       int64
	replyByte int64
	warm      int64
}

type result struct {
	Mode           string           `json:"mode"`
	Target         string           `json:"target"`
	Method         string           `json:"method,omitempty"`
	PayloadBytes   int              `json:"payload_bytes"`
	Concurrency    int              `json:"concurrency"`
	Conns          int              `json:"conns"`
	DurationS      float64          `json:"duration_s"`
	WarmupCalls    int64            `json:"warmup_calls"`
	Calls          int64            `json:"calls"`
	OK             int64            `json:"ok"`
	Errors         map[string]int64 `json:"errors"`
	ErrorTotal     int64            `json:"error_total"`
	Hung           int64            `json:"hung"`
	CallsPerS      float64          `json:"calls_per_s"`
	LatencyUs      map[string]int64 `json:"latency_us"`
	RepliesNonEmpt int64            `json:"replies_nonempty"`
	RepliesBad     int64            `json:"replies_bad"`
	ReplyBytesMean float64          `json:"reply_bytes_mean"`
	ClientCPUS     float64          `json:"client_cpu_s"`
	ClientCPUPct   float64          `json:"client_cpu_pct"`
	GoMaxProcs     int              `json:"gomaxprocs"`
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func grpcTarget(t string) string {
	if strings.Contains(t, "://") || strings.HasPrefix(t, "unix:") {
		return t
	}
	return "unix://" + t
}

func rawPath(t string) string {
	t = strings.TrimPrefix(t, "unix://")
	return strings.TrimPrefix(t, "unix:")
}

func dial(cfg *config) (*grpc.ClientConn, error) {
	return grpc.NewClient(grpcTarget(cfg.target),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(cfg.maxMsg),
			grpc.MaxCallSendMsgSize(cfg.maxMsg),
			grpc.ForceCodec(rawCodec{}),
		),
	)
}

// grpcCall makes one unary call; returns the error code ("" on success), reply size, check.
func grpcCall(cc *grpc.ClientConn, cfg *config, rep *reply) string {
	ctx := context.Background()
	var cancel context.CancelFunc
	if cfg.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
	}
	if cfg.trace != "" {
		ctx = withTrace(ctx, cfg.trace)
	}
	rep.n, rep.ok = 0, false
	if err := cc.Invoke(ctx, cfg.method, &cfg.payload, rep); err != nil {
		return status.Code(err).String()
	}
	return ""
}

// withTrace adds a fresh trace context, as a traced gateway sends with every call (new ids
// each time, so the header block is never the same twice).
func withTrace(ctx context.Context, format string) context.Context {
	var ids [24]byte
	_, _ = crand.Read(ids[:])
	traceID, spanID := hex.EncodeToString(ids[:16]), hex.EncodeToString(ids[16:])
	if format == "b3" {
		return metadata.AppendToOutgoingContext(ctx, "b3", traceID+"-"+spanID+"-1")
	}
	return metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+traceID+"-"+spanID+"-01")
}

func probe(cfg *config, wait time.Duration) int {
	start := time.Now()
	deadline := start.Add(wait)
	attempts := 0
	last := ""
	for {
		attempts++
		code := ""
		if cfg.mode == "raw" {
			rc := &rawConn{path: rawPath(cfg.target), timeout: time.Second,
				frame: encodeFrame(byte(cfg.frameKind), 0, cfg.payload)}
			c, _, ok := rc.call(1, cfg.expect)
			if rc.conn != nil {
				_ = rc.conn.Close()
			}
			if c == "" && !ok {
				c = "bad_reply"
			}
			code = c
		} else {
			cc, err := dial(cfg)
			if err != nil {
				code = "dial"
			} else {
				c := *cfg
				c.timeout = time.Second
				rep := reply{expect: cfg.expect}
				code = grpcCall(cc, &c, &rep)
				if code == "" && !rep.ok {
					code = "bad_reply"
				}
				_ = cc.Close()
			}
		}
		if code == "" {
			out, _ := json.Marshal(map[string]any{"ready": true, "attempts": attempts,
				"elapsed_s": time.Since(start).Seconds()})
			fmt.Println(string(out))
			return 0
		}
		last = code
		if time.Now().After(deadline) {
			out, _ := json.Marshal(map[string]any{"ready": false, "attempts": attempts,
				"last_error": last, "elapsed_s": time.Since(start).Seconds()})
			fmt.Println(string(out))
			return 1
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func percentile(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i] / 1000
}

func run(cfg *config) (*result, error) {
	var conns []*grpc.ClientConn
	if cfg.mode == "grpc" {
		for i := 0; i < cfg.conns; i++ {
			cc, err := dial(cfg)
			if err != nil {
				return nil, err
			}
			cc.Connect()
			conns = append(conns, cc)
		}
		defer func() {
			for _, cc := range conns {
				_ = cc.Close()
			}
		}()
	}

	if cfg.n > 0 {
		cfg.warmup = 0
	}
	start := time.Now()
	measureFrom := start.Add(cfg.warmup)
	stopAt := measureFrom.Add(cfg.duration)
	var stop atomic.Bool
	var issued atomic.Int64
	var inFlight atomic.Int64
	var cpuStart atomic.Uint64
	cpuStart.Store(math.Float64bits(cpuSeconds()))
	if cfg.n <= 0 && cfg.warmup > 0 {
		time.AfterFunc(cfg.warmup, func() { cpuStart.Store(math.Float64bits(cpuSeconds())) })
	}
	if cfg.n <= 0 {
		time.AfterFunc(cfg.warmup+cfg.duration, func() { stop.Store(true) })
	}

	stats := make([]*workerStats, cfg.conc)
	var wg sync.WaitGroup
	for w := 0; w < cfg.conc; w++ {
		ws := &workerStats{errs: map[string]int64{}}
		stats[w] = ws
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var rc *rawConn
			if cfg.mode == "raw" {
				rc = &rawConn{path: rawPath(cfg.target), timeout: cfg.timeout,
					frame: encodeFrame(byte(cfg.frameKind), 0, cfg.payload)}
				defer func() {
					if rc.conn != nil {
						_ = rc.conn.Close()
					}
				}()
			}
			rep := reply{expect: cfg.expect}
			callID := uint64(w) << 40
			for !stop.Load() {
				if cfg.n > 0 && issued.Add(1) > cfg.n {
					return
				}
				callID++
				inFlight.Add(1)
				t0 := time.Now()
				var code string
				var n int
				var ok bool
				if rc != nil {
					code, n, ok = rc.call(callID, cfg.expect)
				} else {
					code = grpcCall(conns[w%len(conns)], cfg, &rep)
					n, ok = rep.n, rep.ok
				}
				el := time.Since(t0)
				inFlight.Add(-1)
				if cfg.n <= 0 && t0.Before(measureFrom) {
					ws.warm++
					continue // warmup
				}
				if code != "" {
					ws.errs[code]++
					if code == "connect" || code == "Unavailable" {
						time.Sleep(5 * time.Millisecond) // don't spin on a dead socket
					}
					continue
				}
				ws.lat = append(ws.lat, el.Nanoseconds())
				ws.replyByte += int64(n)
				if n > 0 {
					ws.nonEmpty++
				}
				if !ok {
					ws.bad++
				}
			}
		}(w)
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	hung := int64(0)
	if cfg.n <= 0 {
		select {
		case <-done:
		case <-time.After(time.Until(stopAt) + cfg.grace):
			hung = inFlight.Load()
		}
	} else {
		<-done
	}
	end := time.Now()
	cpu := cpuSeconds() - math.Float64frombits(cpuStart.Load())

	res := &result{Mode: cfg.mode, Target: cfg.target, PayloadBytes: len(cfg.payload),
		Concurrency: cfg.conc, Conns: cfg.conns, Errors: map[string]int64{}, Hung: hung,
		GoMaxProcs: runtime.GOMAXPROCS(0)}
	if cfg.mode == "grpc" {
		res.Method = cfg.method
	} else {
		res.Conns = cfg.conc
	}
	var all []int64
	var replyBytes int64
	for _, ws := range stats {
		all = append(all, ws.lat...)
		for k, v := range ws.errs {
			res.Errors[k] += v
			res.ErrorTotal += v
		}
		res.RepliesNonEmpt += ws.nonEmpty
		res.RepliesBad += ws.bad
		replyBytes += ws.replyByte
		res.WarmupCalls += ws.warm
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	res.OK = int64(len(all))
	res.Calls = res.OK + res.ErrorTotal
	from := measureFrom
	if cfg.n > 0 {
		from = start
	}
	elapsed := end.Sub(from).Seconds()
	res.DurationS = elapsed
	if elapsed > 0 {
		res.CallsPerS = float64(res.OK) / elapsed
		res.ClientCPUS = cpu
		res.ClientCPUPct = 100 * cpu / elapsed
	}
	if res.OK > 0 {
		res.ReplyBytesMean = float64(replyBytes) / float64(res.OK)
	}
	var sum int64
	for _, v := range all {
		sum += v
	}
	mean := int64(0)
	if len(all) > 0 {
		mean = sum / int64(len(all)) / 1000
	}
	res.LatencyUs = map[string]int64{
		"p50": percentile(all, 50), "p90": percentile(all, 90), "p99": percentile(all, 99),
		"max": percentile(all, 100), "mean": mean,
	}
	return res, nil
}

// serveEcho answers every unary call on any method with the request bytes.
func serveEcho(path string, maxMsg int) error {
	path = rawPath(path)
	_ = os.Remove(path)
	lis, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(
		grpc.ForceServerCodec(rawCodec{}),
		grpc.MaxRecvMsgSize(maxMsg), grpc.MaxSendMsgSize(maxMsg),
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			var msg []byte
			if err := stream.RecvMsg(&msg); err != nil {
				return err
			}
			return stream.SendMsg(&msg)
		}),
	)
	return srv.Serve(lis)
}

// serveRawEcho answers every raw frame with a REPLY frame carrying the same call id and
// payload.
func serveRawEcho(path string) error {
	path = rawPath(path)
	_ = os.Remove(path)
	lis, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	for {
		c, err := lis.Accept()
		if err != nil {
			return err
		}
		go func(c net.Conn) {
			defer c.Close()
			var hdr [frameHeaderSize]byte
			var buf []byte
			for {
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				n := int(binary.BigEndian.Uint32(hdr[4:8]))
				if cap(buf) < frameHeaderSize+n {
					buf = make([]byte, frameHeaderSize+n)
				}
				buf = buf[:frameHeaderSize+n]
				if _, err := io.ReadFull(c, buf[frameHeaderSize:]); err != nil {
					return
				}
				copy(buf, hdr[:])
				buf[3] = kindReply
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}(c)
	}
}

func main() {
	var (
		serve       string
		serveRaw    string
		cfg         config
		payloadPath string
		expect      string
		out         string
		wait        time.Duration
		maxMsgMB    int
		procs       int
	)
	flag.StringVar(&cfg.mode, "mode", "grpc", "grpc or raw")
	flag.StringVar(&cfg.target, "target", "unix:///run/tyk.sock",
		"gRPC target (unix:///path) or, in raw mode, the raw socket path")
	flag.StringVar(&cfg.method, "method", "/coprocess.Dispatcher/Dispatch", "gRPC method")
	flag.StringVar(&payloadPath, "payload", "", "file holding the request message bytes")
	flag.IntVar(&cfg.conc, "c", 16, "concurrency: goroutines, each with one call in flight")
	flag.IntVar(&cfg.conns, "conns", 1, "gRPC connections (goroutine i uses conn i%conns)")
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "measured duration")
	flag.DurationVar(&cfg.warmup, "warmup", 500*time.Millisecond, "unmeasured warm-up")
	flag.Int64Var(&cfg.n, "n", 0, "total calls (overrides -duration/-warmup when > 0)")
	flag.DurationVar(&cfg.timeout, "timeout", 0,
		"per-call deadline (0 = none, like the gateway)")
	flag.DurationVar(&cfg.grace, "grace", 15*time.Second,
		"after -duration, wait this long for in-flight calls, then report them as hung")
	flag.StringVar(&expect, "expect", "",
		"count a reply as good only if it contains this string (default: non-empty)")
	flag.StringVar(&out, "out", "", "write the JSON result here (default stdout)")
	flag.DurationVar(&wait, "wait", 0, "probe: retry one call until it succeeds or this passes")
	flag.IntVar(&maxMsgMB, "max-msg-mb", 64, "MaxCallRecvMsgSize/MaxCallSendMsgSize, MiB")
	flag.IntVar(&cfg.frameKind, "frame-kind", 1, "raw mode: frame kind (1=DISPATCH, 2=EVENT)")
	flag.StringVar(&cfg.trace, "trace", "", "grpc mode: w3c or b3 trace context per call")
	flag.IntVar(&procs, "procs", 0, "GOMAXPROCS (0 = Go's default)")
	flag.StringVar(&serve, "serve", "", "run a gRPC echo server on this Unix socket")
	flag.StringVar(&serveRaw, "serve-raw", "", "run a raw-frame echo server on this socket")
	flag.Parse()

	if procs > 0 {
		runtime.GOMAXPROCS(procs)
	}
	if serve != "" || serveRaw != "" {
		errs := make(chan error, 2)
		if serve != "" {
			go func() { errs <- serveEcho(serve, maxMsgMB<<20) }()
		}
		if serveRaw != "" {
			go func() { errs <- serveRawEcho(serveRaw) }()
		}
		fmt.Fprintln(os.Stderr, "loadgen: echo server:", <-errs)
		os.Exit(1)
	}
	if cfg.mode != "grpc" && cfg.mode != "raw" {
		fmt.Fprintln(os.Stderr, "loadgen: -mode must be grpc or raw")
		os.Exit(2)
	}
	if payloadPath == "" {
		fmt.Fprintln(os.Stderr, "loadgen: -payload is required")
		os.Exit(2)
	}
	data, err := os.ReadFile(payloadPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	cfg.payload = data
	if expect != "" {
		cfg.expect = []byte(expect)
	}
	cfg.maxMsg = maxMsgMB << 20
	if cfg.conc < 1 || cfg.conns < 1 {
		fmt.Fprintln(os.Stderr, "loadgen: -c and -conns must be >= 1")
		os.Exit(2)
	}
	if wait > 0 {
		os.Exit(probe(&cfg, wait))
	}
	res, err := run(&cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	enc, _ := json.MarshalIndent(res, "", "  ")
	if out != "" {
		if err := os.WriteFile(out, append(enc, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		return
	}
	fmt.Println(string(enc))
}
