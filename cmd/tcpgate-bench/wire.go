package main

// A lean Subscribe client: it reads each response straight out of gRPC's
// receive buffers, walking the protobuf wire format for the three fields it
// counts and skipping payloads without copying them, where a generated
// client would decode every event into a message (copying each payload
// twice). The load generator then costs the two shared cores as little as
// the counter behind socat does, so the figures are the gateway's.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// eventFunc receives one event: its kind, the length of its data and the
// first bytes of it (at most headBytes), and its dropped count.
type eventFunc func(kind tcpgatev1.EventKind, dataLen int, head []byte, dropped uint64)

// headBytes is how much of each payload the walker hands over: the send
// time of the latency scenario.
const headBytes = tsDigits

// wireCodec marshals requests as protobuf and walks responses into a
// *wireMsg. Its name keeps the content type application/grpc+proto.
type wireCodec struct{}

// wireMsg is the receiving end of a response: the walk sets *now to the
// time the response was received, then calls fn per event.
type wireMsg struct {
	now  *int64
	fn   eventFunc
	r    mem.Reader
	head [headBytes]byte
}

func (wireCodec) Name() string { return "proto" }

func (wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*wireMsg)
	if !ok {
		return errors.New("wireCodec: not a *wireMsg")
	}
	*m.now = time.Now().UnixNano()
	m.r.Reset(data)
	defer m.r.Close()
	return m.walkResponse()
}

var subscribeDesc = &grpc.StreamDesc{StreamName: "Subscribe", ServerStreams: true}

// Field numbers of tcpgate.v1.SubscribeResponse and Event that are read.
const (
	fieldEvents  = 1  // SubscribeResponse.events
	fieldKind    = 3  // Event.kind
	fieldData    = 8  // Event.data
	fieldText    = 9  // Event.text: a payload that is UTF-8, by default
	fieldDropped = 11 // Event.dropped
)

var errTruncated = errors.New("truncated response")

// walkResponse calls m.fn for every event of the SubscribeResponse in m.r.
func (m *wireMsg) walkResponse() error {
	for m.r.Remaining() > 0 {
		num, typ, err := m.tag()
		if err != nil {
			return err
		}
		if num != fieldEvents || typ != protowire.BytesType {
			if err := m.skip(typ); err != nil {
				return err
			}
			continue
		}
		n, err := m.varint()
		if err != nil {
			return err
		}
		if err := m.walkEvent(m.r.Remaining() - int(n)); err != nil {
			return err
		}
	}
	return nil
}

// walkEvent reads one Event's fields until m.r has end bytes left.
func (m *wireMsg) walkEvent(end int) error {
	var (
		kind    tcpgatev1.EventKind
		dataLen int
		head    []byte
		dropped uint64
	)
	for m.r.Remaining() > end {
		num, typ, err := m.tag()
		if err != nil {
			return err
		}
		switch {
		case num == fieldKind && typ == protowire.VarintType:
			v, err := m.varint()
			if err != nil {
				return err
			}
			kind = tcpgatev1.EventKind(v)
		case num == fieldDropped && typ == protowire.VarintType:
			if dropped, err = m.varint(); err != nil {
				return err
			}
		case (num == fieldData || num == fieldText) && typ == protowire.BytesType && dataLen == 0:
			n, err := m.varint()
			if err != nil {
				return err
			}
			dataLen = int(n)
			head = m.head[:min(dataLen, headBytes)]
			if _, err := io.ReadFull(&m.r, head); err != nil {
				return errTruncated
			}
			if err := m.discard(dataLen - len(head)); err != nil {
				return err
			}
		default:
			if err := m.skip(typ); err != nil {
				return err
			}
		}
	}
	if m.r.Remaining() != end {
		return errTruncated
	}
	m.fn(kind, dataLen, head, dropped)
	return nil
}

func (m *wireMsg) tag() (protowire.Number, protowire.Type, error) {
	v, err := m.varint()
	return protowire.Number(v >> 3), protowire.Type(v & 7), err
}

func (m *wireMsg) varint() (uint64, error) {
	v, err := binary.ReadUvarint(&m.r)
	if err != nil {
		return 0, errTruncated
	}
	return v, nil
}

func (m *wireMsg) discard(n int) error {
	if d, _ := m.r.Discard(n); d != n {
		return errTruncated
	}
	return nil
}

// skip passes over a field value of type typ.
func (m *wireMsg) skip(typ protowire.Type) error {
	switch typ {
	case protowire.VarintType:
		_, err := m.varint()
		return err
	case protowire.Fixed32Type:
		return m.discard(4)
	case protowire.Fixed64Type:
		return m.discard(8)
	case protowire.BytesType:
		n, err := m.varint()
		if err != nil {
			return err
		}
		return m.discard(int(n))
	}
	return fmt.Errorf("unexpected wire type %d", typ)
}
