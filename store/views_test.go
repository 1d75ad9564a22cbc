package store

import (
	"context"
	"reflect"
	"testing"
)

// TestConfigViews: each server's view replaces its last one; conflicts
// are the other servers' definitions of the same MAC that differ in
// hostname or profile, not the agreeing ones, not other MACs.
func TestConfigViews(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		s, _ := b.open(t)
		ctx := context.Background()
		set := func(server string, ms ...ConfigMachine) {
			t.Helper()
			if err := s.SetConfigView(ctx, server, ms); err != nil {
				t.Fatal(err)
			}
		}
		set("a", ConfigMachine{MAC: "52:54:00:66:00:01", Hostname: "w1", Profile: "web"}, ConfigMachine{MAC: "52:54:00:66:00:02", Hostname: "w2", Profile: "web"})
		set("b", ConfigMachine{MAC: "52:54:00:66:00:01", Hostname: "w1", Profile: "db"}, ConfigMachine{MAC: "52:54:00:66:00:03", Hostname: "x", Profile: "x"})
		set("c", ConfigMachine{MAC: "52:54:00:66:00:01", Hostname: "w1", Profile: "web"}, ConfigMachine{MAC: "52:54:00:66:00:02", Hostname: "other", Profile: "web"})
		got, err := s.ConfigConflicts(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		want := []ConfigMachine{
			{Server: "b", MAC: "52:54:00:66:00:01", Hostname: "w1", Profile: "db"},
			{Server: "c", MAC: "52:54:00:66:00:02", Hostname: "other", Profile: "web"},
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("conflicts of a: %+v, want %+v", got, want)
		}
		set("b", ConfigMachine{MAC: "52:54:00:66:00:01", Hostname: "w1", Profile: "web"})
		set("c")
		if got, _ := s.ConfigConflicts(ctx, "a"); len(got) != 0 {
			t.Fatalf("after the views agree: %+v", got)
		}
	})
}
