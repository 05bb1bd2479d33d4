import { Page } from '../components';

export function AdminRoutes({ path }: { path: string[] }) {
  return (
    <Page title="Operator">
      <p>{path.join('/')}</p>
    </Page>
  );
}
