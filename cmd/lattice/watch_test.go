package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// pastDeadline is a context whose deadline has passed but whose timer has
// not fired yet: the moment in which gRPC can already report the deadline.
type pastDeadline struct{ context.Context }

func (pastDeadline) Deadline() (time.Time, bool) { return time.Now().Add(-time.Millisecond), true }

func TestWatchEnded(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(live)
	cancel()
	past := pastDeadline{live}
	future, cancelFuture := context.WithTimeout(live, time.Hour)
	defer cancelFuture()
	cases := []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"no error", done, nil, false},
		{"context cancelled", done, status.Error(codes.Unavailable, "gone"), true},
		{"deadline reported before ctx.Err", past, status.Error(codes.DeadlineExceeded, "stream terminated by RST_STREAM with error code: CANCEL"), true},
		{"cancel after deadline", past, status.Error(codes.Canceled, "context canceled"), true},
		{"server error after deadline", past, status.Error(codes.Internal, "boom"), false},
		{"server deadline, ours not reached", future, status.Error(codes.DeadlineExceeded, "server gave up"), false},
		{"no deadline", live, status.Error(codes.Canceled, "server cancelled"), false},
		{"not a status", live, errors.New("broken pipe"), false},
	}
	for _, c := range cases {
		if got := watchEnded(c.ctx, c.err); got != c.want {
			t.Errorf("%s: watchEnded = %v, want %v", c.name, got, c.want)
		}
	}
}
