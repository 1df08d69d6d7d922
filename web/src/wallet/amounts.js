// Amounts are integers in base units (1 QNC = 10**9 units), held as BigInt: no float ever
// touches an amount. The rules are those of node/qnet/amounts.py (parse_qnc, format_qnc,
// parse_units), so the page refuses what the CLI refuses, with the same reasons.

export const DECIMALS = 9;
export const UNITS_PER_QNC = 10n ** 9n;
export const MAX_AMOUNT = 2n ** 64n - 1n; // amounts and fees travel as unsigned 64-bit integers
const MAX_TEXT_LEN = 64;
// Plain decimal notation only: digits, at most one point, digits on at least one side.
const DECIMAL = /^(\d*)(?:\.(\d*))?$/;

export class AmountError extends Error {
  constructor(message) {
    super(message);
    this.name = "AmountError";
  }
}

/**
 * "12.5" QNC -> 12500000000n units, exactly. `what` names the field in messages
 * ("amount", "fee"). A fee may be zero when `allowZero` is set; an amount never is.
 */
export function parseQnc(text, what = "amount", { allowZero = false } = {}) {
  if (typeof text !== "string") throw new AmountError(`${what} must be text`);
  const trimmed = text.trim();
  if (trimmed === "") throw new AmountError(`enter the ${what} in QNC`);
  if (trimmed.length > MAX_TEXT_LEN) {
    throw new AmountError(`${what} is longer than ${MAX_TEXT_LEN} characters`);
  }
  if (trimmed.startsWith("-")) throw new AmountError(`${what} must not be negative`);
  const match = DECIMAL.exec(trimmed.startsWith("+") ? trimmed.slice(1) : trimmed);
  if (!match || (match[1] === "" && (match[2] ?? "") === "")) {
    throw new AmountError(`${what} "${trimmed}" is not a number (use digits and a point, e.g. 12.5)`);
  }
  const [, whole, frac = ""] = match;
  const significant = frac.replace(/0+$/, "");
  if (significant.length > DECIMALS) {
    throw new AmountError(
      `${what} has more than ${DECIMALS} decimals: the smallest unit is 0.000000001 QNC`,
    );
  }
  const units =
    BigInt(whole || "0") * UNITS_PER_QNC + BigInt(significant.padEnd(DECIMALS, "0") || "0");
  if (units === 0n && !allowZero) throw new AmountError(`${what} must be more than 0`);
  if (units > MAX_AMOUNT) {
    throw new AmountError(`${what} is too large: at most ${formatQnc(MAX_AMOUNT)} QNC`);
  }
  return units;
}

/** 12500000000n -> "12.5"; exact, never rounded. */
export function formatQnc(units) {
  const value = BigInt(units);
  const sign = value < 0n ? "-" : "";
  const magnitude = value < 0n ? -value : value;
  const whole = magnitude / UNITS_PER_QNC;
  const frac = magnitude % UNITS_PER_QNC;
  if (frac === 0n) return `${sign}${whole}`;
  return `${sign}${whole}.${frac.toString().padStart(DECIMALS, "0").replace(/0+$/, "")}`;
}

/** Amounts in the API's JSON are decimal strings of base units; refuse anything else. */
export function parseUnits(value, field = "amount") {
  if (typeof value !== "string" || !/^\d{1,20}$/.test(value)) {
    throw new AmountError(`${field} must be a string of decimal digits (base units)`);
  }
  const units = BigInt(value);
  if (units > MAX_AMOUNT) throw new AmountError(`${field} overflows an unsigned 64-bit integer`);
  return units;
}
