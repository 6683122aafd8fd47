module tykworker/bench/upstream

go 1.22
