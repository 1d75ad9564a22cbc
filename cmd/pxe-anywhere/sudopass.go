package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// sudoPassword is how the install command answers a sudo that asks:
// from the terminal on in, without echo, when it is one; else, with
// --env-password, $SSHPASS (the same user's password); else nil, and
// the engine says what to do.
func sudoPassword(in *os.File, prompt io.Writer, envPass bool) func(user, host string) (string, error) {
	if isTerminal(in) {
		return func(user, host string) (string, error) {
			return readPassword(in, prompt, fmt.Sprintf("[sudo] password for %s@%s: ", user, host))
		}
	}
	if envPass {
		return func(string, string) (string, error) { return os.Getenv("SSHPASS"), nil }
	}
	return nil
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// readPassword prints prompt and reads one line from the terminal in
// with echo off, restoring the terminal after.
func readPassword(in *os.File, prompt io.Writer, text string) (string, error) {
	fd := int(in.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return "", fmt.Errorf("not a terminal: %w", err)
	}
	quiet := *old
	quiet.Lflag &^= unix.ECHO
	quiet.Lflag |= unix.ICANON | unix.ISIG
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &quiet); err != nil {
		return "", err
	}
	defer func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }()
	fmt.Fprint(prompt, text)
	line, err := bufio.NewReader(in).ReadString('\n')
	fmt.Fprintln(prompt)
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", fmt.Errorf("reading the password: %w", err)
	}
	return strings.TrimRight(line, "\r\n"), nil
}
