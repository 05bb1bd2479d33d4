import { timestampDate, type Timestamp } from '@bufbuild/protobuf/wkt';
import {
  AlertSeverity,
  InstanceStatus,
  InvoiceStatus,
  SubscriptionStatus,
  type Money,
} from '@kapal/client';

const idr = new Intl.NumberFormat('id-ID', { style: 'currency', currency: 'IDR' });

/** Rupiah, as Indonesians write it: "Rp 79.000,00". */
export function rupiah(m: Money | undefined): string {
  if (!m) return idr.format(0);
  if (m.currency && m.currency !== 'IDR') {
    return new Intl.NumberFormat('id-ID', { style: 'currency', currency: m.currency }).format(Number(m.amount));
  }
  return idr.format(Number(m.amount));
}

export function rupiahNumber(n: number): string {
  return idr.format(n);
}

const dateTime = new Intl.DateTimeFormat('en-GB', { dateStyle: 'medium', timeStyle: 'medium' });
const dateOnly = new Intl.DateTimeFormat('en-GB', { dateStyle: 'medium' });

export function when(ts: Timestamp | undefined): string {
  return ts ? dateTime.format(timestampDate(ts)) : '—';
}

export function day(ts: Timestamp | undefined): string {
  return ts ? dateOnly.format(timestampDate(ts)) : '—';
}

export function isoTime(ts: Timestamp | undefined): string | undefined {
  return ts ? timestampDate(ts).toISOString() : undefined;
}

export function bytes(n: number | bigint | undefined): string {
  if (n === undefined) return '—';
  let v = Number(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

export function millicores(n: number | bigint | undefined): string {
  if (n === undefined) return '—';
  const v = Number(n);
  return v >= 1000 ? `${(v / 1000).toFixed(2)} cores` : `${v}m`;
}

export function percent(x: number): string {
  return `${(x * 100).toFixed(1)} %`;
}

function words(name: string | undefined): string {
  if (!name) return 'unknown';
  return name.charAt(0) + name.slice(1).toLowerCase().replace(/_/g, ' ');
}

export const instanceStatus = (s: InstanceStatus) => words(InstanceStatus[s]);
export const subscriptionStatus = (s: SubscriptionStatus) => words(SubscriptionStatus[s]);
export const invoiceStatus = (s: InvoiceStatus) => words(InvoiceStatus[s]);
export const severity = (s: AlertSeverity) => words(AlertSeverity[s]);
