// Command interop drives a tykworker server the way the Tyk gateway's grpc-go client does
// (unix:// target, insecure credentials, 64 MiB call size limits) and prints one JSON
// object per scenario. The payloads are ready-made coprocess.Object bytes written by the
// pytest test (tests/interop/test_interop.py); a raw-bytes codec means no generated code.
//
//	interop -target unix:///tmp/x/tyk.sock -dir PAYLOADS -scenario concurrent
//
// Scenarios:
//
//	concurrent  -c goroutines x -n calls each of echo.bin on ONE connection; every reply
//	            must contain "X-Version"
//	big         one call with big.bin (20 MiB body); the reply must be as long as the request
//	unknown     a call to an unknown method must fail with Unimplemented
//	event       DispatchEvent with event.bin must succeed
//	deadline    sleep.bin (hook sleeps 2 s) with a 200 ms deadline: DeadlineExceeded
//	drop        slow calls cancelled by closing the connection, a connection dropped in
//	            the middle of a frame, then calls on new connections must all succeed
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const dispatch = "/coprocess.Dispatcher/Dispatch"

type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	p, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return *p, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}

// Name "proto": the content-type stays "application/grpc" like the gateway's.
func (rawCodec) Name() string { return "proto" }

type result struct {
	Scenario string         `json:"scenario"`
	OK       int            `json:"ok"`
	Errors   map[string]int `json:"errors"`
	Bad      int            `json:"bad"`
	Detail   map[string]any `json:"detail,omitempty"`
	mu       sync.Mutex     `json:"-"`
}

func (r *result) add(err error, good bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err != nil:
		r.Errors[status.Code(err).String()]++
	case !good:
		r.Bad++
	default:
		r.OK++
	}
}

func dial(target string) (*grpc.ClientConn, error) {
	const limit = 64 << 20
	return grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(limit),
			grpc.MaxCallSendMsgSize(limit),
			grpc.ForceCodec(rawCodec{}),
		),
	)
}

func call(cc *grpc.ClientConn, ctx context.Context, method string, payload []byte) ([]byte, error) {
	in := payload
	var out []byte
	err := cc.Invoke(ctx, method, &in, &out)
	return out, err
}

func load(dir, name string) []byte {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop:", err)
		os.Exit(2)
	}
	return data
}

func concurrent(target, dir string, conc, n int, r *result) error {
	cc, err := dial(target)
	if err != nil {
		return err
	}
	defer cc.Close()
	payload := load(dir, "echo.bin")
	var wg sync.WaitGroup
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				out, err := call(cc, context.Background(), dispatch, payload)
				r.add(err, bytes.Contains(out, []byte("X-Version")))
			}
		}()
	}
	wg.Wait()
	return nil
}

func big(target, dir string, r *result) error {
	cc, err := dial(target)
	if err != nil {
		return err
	}
	defer cc.Close()
	payload := load(dir, "big.bin")
	start := time.Now()
	out, err := call(cc, context.Background(), dispatch, payload)
	r.add(err, len(out) >= len(payload))
	r.Detail = map[string]any{"request": len(payload), "reply": len(out),
		"seconds": time.Since(start).Seconds()}
	return nil
}

func expectCode(target, method string, payload []byte, timeout time.Duration, r *result) error {
	cc, err := dial(target)
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	start := time.Now()
	_, err = call(cc, ctx, method, payload)
	r.add(err, true)
	r.Detail = map[string]any{"seconds": time.Since(start).Seconds()}
	return nil
}

// drop: cancelled calls on a closed connection, a half-written frame, then fresh calls.
func drop(target, dir string, r *result) error {
	cc, err := dial(target)
	if err != nil {
		return err
	}
	slow := load(dir, "sleep.bin")
	var wg sync.WaitGroup
	cancelled := &result{Errors: map[string]int{}}
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := call(cc, context.Background(), dispatch, slow)
			cancelled.add(err, true)
		}()
	}
	time.Sleep(150 * time.Millisecond)
	cc.Close()
	wg.Wait()
	path := strings.TrimPrefix(target, "unix://")
	for i := 0; i < 3; i++ {
		conn, err := net.Dial("unix", path)
		if err != nil {
			return err
		}
		// The connection preface, empty SETTINGS, then half of a HEADERS frame header.
		conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x10\x01"))
		conn.Close()
	}
	after := &result{Errors: map[string]int{}}
	if err := concurrent(target, dir, 8, 25, after); err != nil {
		return err
	}
	r.OK, r.Errors, r.Bad = after.OK, after.Errors, after.Bad
	r.Detail = map[string]any{"cancelled_errors": cancelled.Errors, "cancelled_ok": cancelled.OK}
	return nil
}

func main() {
	target := flag.String("target", "", "unix:///path/to/tyk.sock")
	dir := flag.String("dir", ".", "directory of payload files")
	scenario := flag.String("scenario", "concurrent", "scenario name (see the package doc)")
	conc := flag.Int("c", 64, "concurrent goroutines (concurrent)")
	n := flag.Int("n", 50, "calls per goroutine (concurrent)")
	flag.Parse()
	r := &result{Scenario: *scenario, Errors: map[string]int{}}
	var err error
	switch *scenario {
	case "concurrent":
		err = concurrent(*target, *dir, *conc, *n, r)
	case "big":
		err = big(*target, *dir, r)
	case "unknown":
		err = expectCode(*target, "/coprocess.Dispatcher/Nope", []byte{}, 0, r)
	case "event":
		err = expectCode(*target, "/coprocess.Dispatcher/DispatchEvent", load(*dir, "event.bin"), 0, r)
	case "deadline":
		err = expectCode(*target, dispatch, load(*dir, "sleep.bin"), 200*time.Millisecond, r)
	case "drop":
		err = drop(*target, *dir, r)
	default:
		err = fmt.Errorf("unknown scenario %q", *scenario)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
