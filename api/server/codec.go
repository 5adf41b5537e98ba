package server

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
)

// grpc-go answers a request that fails to decode (for example a string
// field holding invalid UTF-8, which conforming Go clients cannot even send
// but other clients can) with codes.Internal, before any handler or
// interceptor runs. lattice promises InvalidArgument for bad input, so the
// server codec lets such a request through as an empty message, remembers
// why it failed, and the interceptors below refuse it.

// ServerOptions returns the options every lattice gRPC server uses: the
// decoding codec and the interceptors that turn decode failures into
// InvalidArgument. Extra unary interceptors run after them.
func ServerOptions(unary ...grpc.UnaryServerInterceptor) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(&lenientCodec{inner: encoding.GetCodecV2("proto")}),
		// Peers ping idle streams every second to notice a dead link quickly.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 500 * time.Millisecond, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(append([]grpc.UnaryServerInterceptor{refuseUndecodable}, unary...)...),
		grpc.ChainStreamInterceptor(refuseUndecodableStream),
	}
}

// undecodable maps a request message to the error that decoding it gave.
var undecodable sync.Map

type lenientCodec struct{ inner encoding.CodecV2 }

func (c *lenientCodec) Marshal(v any) (mem.BufferSlice, error) { return c.inner.Marshal(v) }
func (c *lenientCodec) Name() string                           { return c.inner.Name() }

func (c *lenientCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if err := c.inner.Unmarshal(data, v); err != nil {
		undecodable.Store(v, err)
	}
	return nil
}

func decodeError(m any) error {
	if err, ok := undecodable.LoadAndDelete(m); ok {
		return status.Errorf(codes.InvalidArgument, "malformed request: %v", err)
	}
	return nil
}

func refuseUndecodable(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := decodeError(req); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func refuseUndecodableStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, checkedStream{ss})
}

type checkedStream struct{ grpc.ServerStream }

func (s checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return decodeError(m)
}
