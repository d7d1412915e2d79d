module github.com/ermc-go/ermc

go 1.22

require (
	github.com/pierrec/lz4/v4 v4.1.33
	github.com/valyala/bytebufferpool v1.0.0
)
