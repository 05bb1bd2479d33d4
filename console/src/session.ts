import { createContext } from 'preact';
import { useContext } from 'preact/hooks';
import { Role, type Account } from '@kapal/client';

export type Session = {
  account?: Account;
  /** Called after sign-up/log-in with the new token, and with '' on log-out. */
  signedIn: (token: string, account?: Account) => void;
};

export const SessionContext = createContext<Session>({ signedIn: () => {} });

export function useSession(): Session {
  return useContext(SessionContext);
}

export function isAdmin(a: Account | undefined): boolean {
  return a?.role === Role.ADMIN;
}
