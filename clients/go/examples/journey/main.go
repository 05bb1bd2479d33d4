// Command journey shows Kapal's Go client end to end: it signs up a customer, reads the catalog,
// checks out the free trial of an app and watches the new instance until it is READY.
//
//	KAPAL_PASSWORD='a long passphrase 1' go run ./examples/journey \
//	    -url http://127.0.0.1:8080 -email you@example.com -app n8n
//
// Each step prints one line ("signed up:", "catalog:", "order:", "status:", "ready:"); the
// password is read from KAPAL_PASSWORD so it is not on the command line. Exits non-zero with
// the server's message when a call fails.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"

	kapalv1 "kapal/clients/go/kapal/v1"
	"kapal/clients/go/kapal/v1/kapalv1connect"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:8080", "the Kapal gateway's URL")
	email := flag.String("email", "", "email of the account to sign up")
	app := flag.String("app", "n8n", "the app whose trial to check out")
	timeout := flag.Duration("timeout", 3*time.Minute, "how long to wait for READY")
	flag.Parse()
	password := os.Getenv("KAPAL_PASSWORD")
	if *email == "" || password == "" {
		fmt.Fprintln(os.Stderr, "journey: -email and KAPAL_PASSWORD are required")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *url, *email, password, *app); err != nil {
		fmt.Fprintln(os.Stderr, "journey:", err)
		os.Exit(1)
	}
}

// httpClient speaks HTTP/2 to the gateway: over TLS for https URLs, and in cleartext (h2c, as a
// gRPC server on plain HTTP expects) for http URLs.
func httpClient(url string) *http.Client {
	if strings.HasPrefix(url, "https://") {
		return http.DefaultClient
	}
	t := &http.Transport{Protocols: new(http.Protocols)}
	t.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: t}
}

// withToken wraps msg in a request that carries the session token.
func withToken[T any](msg *T, token string) *connect.Request[T] {
	req := connect.NewRequest(msg)
	req.Header().Set("Authorization", "Bearer "+token)
	return req
}

func run(ctx context.Context, url, email, password, appID string) error {
	hc := httpClient(url)
	// connect.WithGRPC: the gateway speaks gRPC (and grpc-web), not the Connect protocol.
	accounts := kapalv1connect.NewAccountServiceClient(hc, url, connect.WithGRPC())
	catalog := kapalv1connect.NewCatalogServiceClient(hc, url, connect.WithGRPC())
	orders := kapalv1connect.NewOrderServiceClient(hc, url, connect.WithGRPC())
	instances := kapalv1connect.NewInstanceServiceClient(hc, url, connect.WithGRPC())

	session, err := accounts.SignUp(ctx, connect.NewRequest(&kapalv1.SignUpRequest{
		Email:       email,
		Password:    password,
		DisplayName: "Go journey",
	}))
	if err != nil {
		return fmt.Errorf("sign-up: %w", err)
	}
	token := session.Msg.GetToken()
	if token == "" {
		return errors.New("sign-up opened no session (the server verifies email first: verify, then log in)")
	}
	fmt.Printf("signed up: %s account=%s\n", session.Msg.GetAccount().GetEmail(), session.Msg.GetAccount().GetId())

	apps, err := catalog.ListApps(ctx, connect.NewRequest(&kapalv1.ListAppsRequest{}))
	if err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	var trial *kapalv1.Plan
	for _, a := range apps.Msg.GetApps() {
		if a.GetId() != appID {
			continue
		}
		for _, p := range a.GetPlans() {
			if p.GetTrialDays() > 0 {
				trial = p
				break
			}
		}
	}
	if trial == nil {
		return fmt.Errorf("catalog: no trial plan for %q", appID)
	}
	price := trial.GetMonthlyPrice()
	fmt.Printf("catalog: %d apps; %s trial plan %s (%d days, %d %s)\n", len(apps.Msg.GetApps()), appID,
		trial.GetId(), trial.GetTrialDays(), price.GetAmount(), price.GetCurrency())

	// One idempotency key per intended order: retrying Checkout with it never orders twice.
	order, err := orders.Checkout(ctx, withToken(&kapalv1.CheckoutRequest{
		AppId:          appID,
		PlanId:         trial.GetId(),
		IdempotencyKey: rand.Text(),
	}, token))
	if err != nil {
		return fmt.Errorf("checkout: %w", err)
	}
	fmt.Printf("order: %s %s instance=%s\n", order.Msg.GetId(), order.Msg.GetStatus(), order.Msg.GetInstanceId())
	if order.Msg.GetStatus() != kapalv1.OrderStatus_ORDER_STATUS_COMPLETED {
		return fmt.Errorf("checkout: order %s: %s", order.Msg.GetStatus(), order.Msg.GetFailureReason())
	}

	// WatchInstance sends the current state first, then every change.
	stream, err := instances.WatchInstance(ctx, withToken(&kapalv1.WatchInstanceRequest{
		InstanceId: order.Msg.GetInstanceId(),
	}, token))
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	defer stream.Close()
	last := kapalv1.InstanceStatus_INSTANCE_STATUS_UNSPECIFIED
	for stream.Receive() {
		inst := stream.Msg().GetInstance()
		if inst.GetStatus() != last {
			last = inst.GetStatus()
			fmt.Printf("status: %s %s\n", last, inst.GetStatusReason())
		}
		switch last {
		case kapalv1.InstanceStatus_INSTANCE_STATUS_READY:
			fmt.Printf("ready: %s %s\n", inst.GetId(), inst.GetUrl())
			return nil
		case kapalv1.InstanceStatus_INSTANCE_STATUS_FAILED, kapalv1.InstanceStatus_INSTANCE_STATUS_DELETED:
			return fmt.Errorf("instance %s: %s", last, inst.GetStatusReason())
		}
	}
	if err := stream.Err(); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	return fmt.Errorf("watch: the stream ended at %s before READY", last)
}
