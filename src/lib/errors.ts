/**
 * One base error with a code and a retry decision; one subclass per meaning, recognised with instanceof.
 */
export class AppError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  constructor(message: string, opts: { code?: string; retryable?: boolean; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = opts.code ?? 'APP_ERROR';
    this.retryable = opts.retryable ?? false;
  }
}

/** A bad configuration value: the process must not start. */
export class ConfigError extends AppError {
  constructor(message: string) { super(message, { code: 'CONFIG' }); }
}

/** Bad input from a caller: maps to a 4xx. */
export class ValidationError extends AppError {
  readonly status: number;
  constructor(message: string, status = 400) {
    super(message, { code: 'VALIDATION' });
    this.status = status;
  }
}

/** The caller sent no credential, or one that matches no role: 401 with a Bearer challenge. */
export class UnauthorizedError extends AppError {
  constructor(message: string) { super(message, { code: 'UNAUTHORIZED' }); }
}

/** The caller is known but may not do this (a viewer asking to replay), or the feature is switched off: 403. */
export class ForbiddenError extends AppError {
  constructor(message: string) { super(message, { code: 'FORBIDDEN' }); }
}

/** The thing asked for does not exist: 404. */
export class NotFoundError extends AppError {
  constructor(message: string) { super(message, { code: 'NOT_FOUND' }); }
}

/** A dependency (PostgreSQL, Redis, RabbitMQ) is unreachable: try again later. */
export class DependencyUnavailableError extends AppError {
  readonly dependency: string;
  constructor(dependency: string, message: string, cause?: unknown) {
    super(message, { code: 'DEPENDENCY_UNAVAILABLE', retryable: true, cause });
    this.dependency = dependency;
  }
}

/** No usable security-platform token right now (Redis down, lock contention, min interval): retry later. */
export class TokenUnavailableError extends AppError {
  constructor(message: string, cause?: unknown) { super(message, { code: 'TOKEN_UNAVAILABLE', retryable: true, cause }); }
}

/** The token endpoint rejected our credentials; the circuit is open, jobs wait with backoff. */
export class BadCredentialsError extends AppError {
  constructor(message: string, cause?: unknown) { super(message, { code: 'BAD_CREDENTIALS', retryable: true, cause }); }
}

/** The security platform answered 401 for a delete call made with the given token generation. */
export class TokenRejectedError extends AppError {
  readonly generation: number;
  constructor(generation: number, message = 'security platform rejected the token (401)') {
    super(message, { code: 'TOKEN_REJECTED', retryable: true });
    this.generation = generation;
  }
}

/** 429, 5xx, timeout or network failure at the security platform; `httpStatus` null when nothing was answered. */
export class SecplatRetryableError extends AppError {
  readonly httpStatus: number | null;
  constructor(message: string, cause?: unknown, httpStatus: number | null = null) {
    super(message, { code: 'SECPLAT_RETRYABLE', retryable: true, cause });
    this.httpStatus = httpStatus;
  }
}

/** Any other 4xx from the security platform: the entries of that call fail with this reason. */
export class SecplatRejectedError extends AppError {
  readonly httpStatus: number | null;
  constructor(message: string, httpStatus: number | null = null) {
    super(message, { code: 'SECPLAT_REJECTED', retryable: false });
    this.httpStatus = httpStatus;
  }
}

/** A job body that can never be processed: park it, do not retry. */
export class UnrecoverableJobError extends AppError {
  constructor(message: string, cause?: unknown) { super(message, { code: 'UNRECOVERABLE_JOB', retryable: false, cause }); }
}

/** Normalise anything thrown into an AppError once, before logging or deciding retry. */
export function toAppError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  if (err instanceof Error) return new AppError(err.message, { code: 'UNEXPECTED', retryable: true, cause: err });
  return new AppError(String(err), { code: 'UNEXPECTED', retryable: true });
}
