package ermc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Typed values sit on top of the []byte API, with python-memcached's flag
// bits so that Python services read them back as the same types.

// Codec encodes Go values for SetObject and GetObject: the analogue of
// pyermc's pickle support (flag bit 1).
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSONCodec is the default Codec: readable from any language.
type JSONCodec struct{}

func (JSONCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (JSONCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// SetInt stores n as a decimal string with the integer flag, the form
// Incr and Decr work on and python-memcached reads back as an int.
func (c *Client) SetInt(ctx context.Context, key string, n int64, ttl time.Duration) error {
	op := c.trace(ctx, "set", key, 1)
	buf := getBuffer(20) // a stack array would escape into the request
	buf.B = strconv.AppendInt(buf.B[:0], n, 10)
	err := op.end(c.store(ctx, opSet, key, buf.B, FlagInteger, ttl, 0))
	putBuffer(buf)
	return err
}

// GetInt reads a decimal integer, as stored by SetInt, Incr or Decr (whose
// results memcached may space-pad).
func (c *Client) GetInt(ctx context.Context, key string) (int64, error) {
	op := c.trace(ctx, "get", key, 1)
	n, err := c.getInt(ctx, key)
	return n, op.end(err)
}

func (c *Client) getInt(ctx context.Context, key string) (int64, error) {
	buf := getBuffer(32)
	defer putBuffer(buf)
	v, _, _, err := c.get(ctx, opGet, key, 0, buf.B[:0])
	buf.B = v
	if err != nil {
		return 0, err
	}
	n, perr := strconv.ParseInt(string(bytes.TrimRight(v, " ")), 10, 64)
	if perr != nil {
		return 0, fmt.Errorf("%w: %s is not an integer", ErrCorruptValue, quoteBounded(v))
	}
	return n, nil
}

// SetObject stores v encoded by the client's Codec, with the encoded flag.
func (c *Client) SetObject(ctx context.Context, key string, v any, ttl time.Duration) error {
	op := c.trace(ctx, "set", key, 1)
	return op.end(c.setObject(ctx, key, v, ttl))
}

func (c *Client) setObject(ctx context.Context, key string, v any, ttl time.Duration) error {
	data, err := c.opts.Codec.Marshal(v)
	if err != nil {
		return fmt.Errorf("ermc: encoding value for %s: %w", quoteBounded([]byte(key)), err)
	}
	return c.store(ctx, opSet, key, data, FlagEncoded, ttl, 0)
}

// GetObject decodes the value stored by SetObject into v. A value stored
// without the encoded flag is ErrCorruptValue rather than a guess.
func (c *Client) GetObject(ctx context.Context, key string, v any) error {
	op := c.trace(ctx, "get", key, 1)
	return op.end(c.getObject(ctx, key, v))
}

func (c *Client) getObject(ctx context.Context, key string, v any) error {
	buf := getBuffer(0)
	defer putBuffer(buf)
	data, flags, _, err := c.get(ctx, opGet, key, 0, buf.B[:0])
	buf.B = data
	if err != nil {
		return err
	}
	if flags&FlagEncoded == 0 {
		return fmt.Errorf("%w: %s was not stored as an encoded object (flags %d)", ErrCorruptValue, quoteBounded([]byte(key)), flags)
	}
	if err := c.opts.Codec.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: decoding %s: %v", ErrCorruptValue, quoteBounded([]byte(key)), err)
	}
	return nil
}
