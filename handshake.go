package chatkit

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// HTTPError is an error with the HTTP status that a refused handshake
// answers with. Return one (or wrap one) from a WithAuth or
// WithRoomResolver function to choose the status; Message becomes the
// "error" field of the JSON body.
type HTTPError struct {
	Status  int
	Message string
}

// Error returns e.Message.
func (e HTTPError) Error() string { return e.Message }

const (
	maxUsernameLen = 32
	maxRoomLen     = 64
	defaultRoom    = "general"
)

func usernameFromQuery(r *http.Request) (string, error) {
	name := r.URL.Query().Get("username")
	if name == "" {
		return "", HTTPError{http.StatusBadRequest, "missing query parameter username"}
	}
	return name, nil
}

func roomFromQuery(r *http.Request) (string, error) {
	if room := r.URL.Query().Get("room"); room != "" {
		return room, nil
	}
	return defaultRoom, nil
}

// checkUsername trims name and checks it is 1 to 32 characters of valid
// UTF-8 without control characters.
func checkUsername(name string) (string, error) {
	name = strings.TrimSpace(name)
	n := utf8.RuneCountInString(name)
	switch {
	case !utf8.ValidString(name):
		return "", errors.New("username is not valid UTF-8")
	case n == 0:
		return "", errors.New("username is empty")
	case n > maxUsernameLen:
		return "", fmt.Errorf("username exceeds %d characters", maxUsernameLen)
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return "", errors.New("username contains control characters")
	}
	return name, nil
}

// checkRoom checks a room name is 1 to 64 characters of [A-Za-z0-9._-].
func checkRoom(name string) error {
	if name == "" || len(name) > maxRoomLen {
		return fmt.Errorf("room name must be 1 to %d characters", maxRoomLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return errors.New("room name may only contain letters, digits, '.', '_' and '-'")
		}
	}
	return nil
}

// resumePoint reads the optional since and epoch query parameters.
func resumePoint(q url.Values) (resume bool, since int64, epoch string, err error) {
	epoch = q.Get("epoch")
	if !q.Has("since") {
		return false, 0, epoch, nil
	}
	since, err = strconv.ParseInt(q.Get("since"), 10, 64)
	if err != nil || since < 0 {
		return false, 0, "", errors.New("since must be a non-negative integer message id")
	}
	return true, since, epoch, nil
}

// isUpgrade reports whether r asks for a WebSocket upgrade.
func isUpgrade(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") && headerHasToken(r.Header, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// originAllowed applies the same rule as coder/websocket: no Origin header
// (a non-browser client) and same-host origins pass; other origins must
// match one of the patterns. Doing it here rather than in
// websocket.Accept lets the refusal carry the same JSON body as every other
// refusal.
func originAllowed(r *http.Request, patterns []string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(r.Host, u.Host) {
		return true
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

// refuse answers a handshake that will not be upgraded with status and a
// JSON body {"error": message}.
func refuse(w http.ResponseWriter, status int, message string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": message})
}

// refusalOf returns the status and message of an HTTPError in err's
// chain, or fallback and err's text.
func refusalOf(err error, fallback int) (int, string) {
	var he HTTPError
	var hp *HTTPError
	switch {
	case errors.As(err, &he) && he.Status >= 400 && he.Status <= 599:
		return he.Status, he.Message
	case errors.As(err, &hp) && hp.Status >= 400 && hp.Status <= 599:
		return hp.Status, hp.Message
	default:
		return fallback, err.Error()
	}
}
