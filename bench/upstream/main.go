// upstream: the fast, non-Python upstream of the gateway benchmark (bench/gateway.py).
//
// Answers every request with 200 and a 2-byte body after reading the request body in full,
// so the gateway's proxy path is exercised but the upstream costs next to nothing.
//
//	upstream -listen 127.0.0.1:8081
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok"))
	})
	log.Fatal(http.ListenAndServe(*listen, handler))
}
