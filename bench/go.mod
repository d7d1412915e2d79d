module github.com/ermc-go/ermc/bench

go 1.23.0

replace github.com/ermc-go/ermc => ../

require (
	github.com/HdrHistogram/hdrhistogram-go v1.4.0
	github.com/bradfitz/gomemcache v0.0.0-20260422231931-4d751bb6e37c
	github.com/ermc-go/ermc v0.0.0-00010101000000-000000000000
	github.com/pierrec/lz4/v4 v4.1.33
)
