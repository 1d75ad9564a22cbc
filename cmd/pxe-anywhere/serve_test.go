package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestServeHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"serve", "--help"}, &out, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	var f serveFlags
	fs := serveFlagSet(&bytes.Buffer{}, &f)
	fs.VisitAll(func(fl *flag.Flag) {
		if !strings.Contains(out.String(), "-"+fl.Name) || fl.Usage == "" {
			t.Errorf("flag -%s is not documented", fl.Name)
		}
	})
}

func TestServeRefusesBadStarts(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing config", []string{"--config", filepath.Join(dir, "nope.yaml")}, "nope.yaml"},
		{"config error names the line", []string{"--config", write("typo.yaml", "server:\n  interfaces: [lo]\nprofiles:\n  web:\n    flak: x\n")}, `typo.yaml:5`},
		{"no interfaces", []string{"--config", write("noif.yaml", "server:\n  max_installs: 2\n")}, "server.interfaces is empty"},
		{"interface that does not exist", []string{"--config", write("badif.yaml", "server:\n  interfaces: [pxe-nope0]\n  state_dir: "+dir+"/state\n")}, `interface "pxe-nope0" does not exist`},
		{"stray argument", []string{"extra"}, `unexpected argument "extra"`},
		{"bad log level", []string{"--log-level", "loud"}, "--log-level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), append([]string{"serve"}, tt.args...), &out, &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestConfigCheck(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"config", "check", "../../profiles/testdata/full.yaml"}, &out, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "ok (") {
		t.Fatalf("output %q", out.String())
	}
	p := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(p, []byte("machines:\n  - mac: nope\n"), 0o644)
	err := run(context.Background(), []string{"config", "check", p}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:2") {
		t.Fatalf("err = %v", err)
	}
}

func TestSecretsAreCreatedPrivate(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "ssh", "id_ed25519")
	s1, err := loadOrCreateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := loadOrCreateKey(key)
	if err != nil || !bytes.Equal(s1.PublicKey().Marshal(), s2.PublicKey().Marshal()) {
		t.Fatalf("reloaded key differs: %v", err)
	}
	tok := filepath.Join(dir, "api-token")
	t1, err := loadOrCreateToken(tok)
	if err != nil || len(t1) < 32 {
		t.Fatalf("token %q %v", t1, err)
	}
	for _, p := range []string{key, tok} {
		st, _ := os.Stat(p)
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %o", p, st.Mode().Perm())
		}
	}
	os.Chmod(tok, 0o644)
	if _, err := loadOrCreateToken(tok); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable token accepted: %v", err)
	}
}
