"""Kapal's Python client end to end: signs up a customer, reads the catalog, checks out the free
trial of an app and watches the new instance until it is READY.

    pip install ./clients/python
    KAPAL_PASSWORD='a long passphrase 1' python clients/python/examples/journey.py \
        --target 127.0.0.1:8080 --email you@example.com --app n8n

Each step prints one line ("signed up:", "catalog:", "order:", "status:", "ready:"); the password
is read from KAPAL_PASSWORD so it is not on the command line. Exits non-zero with the server's
message when a call fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

import grpc

from kapal.v1 import (
    account_pb2,
    account_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
)


def journey(channel: grpc.Channel, email: str, password: str, app_id: str, timeout: float) -> None:
    accounts = account_pb2_grpc.AccountServiceStub(channel)
    catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
    orders = order_pb2_grpc.OrderServiceStub(channel)
    instances = instance_pb2_grpc.InstanceServiceStub(channel)

    session = accounts.SignUp(
        account_pb2.SignUpRequest(email=email, password=password, display_name="Python journey")
    )
    if not session.token:
        raise SystemExit("sign-up opened no session (the server verifies email first: verify, then log in)")
    print(f"signed up: {session.account.email} account={session.account.id}", flush=True)
    # Every call but sign-up, log-in and the catalog carries the session token.
    auth = (("authorization", f"Bearer {session.token}"),)

    apps = catalog.ListApps(catalog_pb2.ListAppsRequest()).apps
    trial = next(
        (p for a in apps if a.id == app_id for p in a.plans if p.trial_days > 0),
        None,
    )
    if trial is None:
        raise SystemExit(f"catalog: no trial plan for {app_id!r}")
    price = trial.monthly_price
    print(
        f"catalog: {len(apps)} apps; {app_id} trial plan {trial.id} "
        f"({trial.trial_days} days, {price.amount} {price.currency})",
        flush=True,
    )

    # One idempotency key per intended order: retrying Checkout with it never orders twice.
    order = orders.Checkout(
        order_pb2.CheckoutRequest(app_id=app_id, plan_id=trial.id, idempotency_key=str(uuid.uuid4())),
        metadata=auth,
    )
    status = order_pb2.OrderStatus.Name(order.status)
    print(f"order: {order.id} {status} instance={order.instance_id}", flush=True)
    if order.status != order_pb2.ORDER_STATUS_COMPLETED:
        raise SystemExit(f"checkout: order {status}: {order.failure_reason}")

    # WatchInstance sends the current state first, then every change; the deadline bounds the wait.
    events = instances.WatchInstance(
        instance_pb2.WatchInstanceRequest(instance_id=order.instance_id),
        metadata=auth,
        timeout=timeout,
    )
    last = instance_pb2.INSTANCE_STATUS_UNSPECIFIED
    try:
        for event in events:
            inst = event.instance
            if inst.status != last:
                last = inst.status
                print(f"status: {instance_pb2.InstanceStatus.Name(last)} {inst.status_reason}", flush=True)
            if last == instance_pb2.INSTANCE_STATUS_READY:
                print(f"ready: {inst.id} {inst.url}", flush=True)
                return
            if last in (instance_pb2.INSTANCE_STATUS_FAILED, instance_pb2.INSTANCE_STATUS_DELETED):
                raise SystemExit(f"instance {instance_pb2.InstanceStatus.Name(last)}: {inst.status_reason}")
    finally:
        events.cancel()
    raise SystemExit(f"watch: the stream ended at {instance_pb2.InstanceStatus.Name(last)} before READY")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:8080", help="the Kapal gateway, host:port")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (the system's roots)")
    parser.add_argument("--email", required=True, help="email of the account to sign up")
    parser.add_argument("--app", default="n8n", help="the app whose trial to check out")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for READY")
    args = parser.parse_args()
    password = os.environ.get("KAPAL_PASSWORD")
    if not password:
        parser.error("KAPAL_PASSWORD is required")
    channel = (
        grpc.secure_channel(args.target, grpc.ssl_channel_credentials())
        if args.tls
        else grpc.insecure_channel(args.target)
    )
    with channel:
        try:
            journey(channel, args.email, password, args.app, args.timeout)
        except grpc.RpcError as e:
            # The status code and the message the server sent.
            sys.exit(f"journey: {e.code().name}: {e.details()}")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
