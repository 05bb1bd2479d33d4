//! Kubernetes resource quantities (`250m`, `1.5Gi`, `128974848`, `129e6`, `2k`) as integers.
//!
//! The grammar is the API server's: a signed decimal number followed by a binary-SI suffix
//! (`Ki` `Mi` `Gi` `Ti` `Pi` `Ei`), a decimal-SI suffix (`n` `u` `m` `k` `M` `G` `T` `P` `E`, or
//! none) or a decimal exponent (`e3`, `E-2`). Like the API server's `Value()` and `MilliValue()`,
//! a fractional result is rounded up.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// `value * numerator / denominator`, exactly, before rounding.
struct Ratio {
    negative: bool,
    numerator: u128,
    denominator: u128,
}

fn pow10(exp: u32) -> Option<u128> {
    10u128.checked_pow(exp)
}

fn parse(s: &str) -> Option<Ratio> {
    let s = s.trim();
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let mut numerator = digits;
    let mut denominator = pow10(u32::try_from(frac.len()).ok()?)?;
    let binary = |shift: u32| 1u128.checked_shl(shift);
    match suffix {
        "" => {}
        "Ki" => numerator = numerator.checked_mul(binary(10)?)?,
        "Mi" => numerator = numerator.checked_mul(binary(20)?)?,
        "Gi" => numerator = numerator.checked_mul(binary(30)?)?,
        "Ti" => numerator = numerator.checked_mul(binary(40)?)?,
        "Pi" => numerator = numerator.checked_mul(binary(50)?)?,
        "Ei" => numerator = numerator.checked_mul(binary(60)?)?,
        "n" => denominator = denominator.checked_mul(pow10(9)?)?,
        "u" => denominator = denominator.checked_mul(pow10(6)?)?,
        "m" => denominator = denominator.checked_mul(pow10(3)?)?,
        "k" => numerator = numerator.checked_mul(pow10(3)?)?,
        "M" => numerator = numerator.checked_mul(pow10(6)?)?,
        "G" => numerator = numerator.checked_mul(pow10(9)?)?,
        "T" => numerator = numerator.checked_mul(pow10(12)?)?,
        "P" => numerator = numerator.checked_mul(pow10(15)?)?,
        "E" => numerator = numerator.checked_mul(pow10(18)?)?,
        exponent => {
            let exp = exponent.strip_prefix(['e', 'E'])?;
            let (negative_exp, digits) = match exp.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, exp.strip_prefix('+').unwrap_or(exp)),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let e: u32 = digits.parse().ok()?;
            if negative_exp {
                denominator = denominator.checked_mul(pow10(e)?)?;
            } else {
                numerator = numerator.checked_mul(pow10(e)?)?;
            }
        }
    }
    Some(Ratio {
        negative,
        numerator,
        denominator,
    })
}

fn scaled(s: &str, factor: u128) -> Option<i64> {
    let r = parse(s)?;
    let n = r.numerator.checked_mul(factor)?;
    // Rounded up (away from zero for positive values, as Kubernetes does).
    let value = i64::try_from(n.div_ceil(r.denominator)).ok()?;
    Some(if r.negative { -value } else { value })
}

/// The quantity as a whole number (bytes, pods), rounded up; `None` when it is not a quantity
/// or does not fit.
pub fn value(q: &Quantity) -> Option<i64> {
    scaled(&q.0, 1)
}

/// The quantity in thousandths (CPU millicores), rounded up.
pub fn milli_value(q: &Quantity) -> Option<i64> {
    scaled(&q.0, 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn cpu_quantities_in_millicores() {
        for (text, millis) in [
            ("250m", 250),
            ("1", 1000),
            ("2", 2000),
            ("0.5", 500),
            ("1.25", 1250),
            ("100u", 1),
            ("1500000n", 2),
            ("0", 0),
            ("4k", 4_000_000),
            ("1e3", 1_000_000),
            ("15E-1", 1500),
        ] {
            assert_eq!(milli_value(&q(text)), Some(millis), "{text}");
        }
    }

    #[test]
    fn memory_quantities_in_bytes() {
        for (text, bytes) in [
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129M", 129_000_000),
            ("123Mi", 123 << 20),
            ("1.5Gi", 3 << 29),
            ("2Gi", 2 << 30),
            ("16331164Ki", 16_331_164 << 10),
            ("1Ti", 1 << 40),
            ("1k", 1000),
            ("1G", 1_000_000_000),
            ("0.1", 1),
            ("110", 110),
            ("-1Ki", -1024),
        ] {
            assert_eq!(value(&q(text)), Some(bytes), "{text}");
        }
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for text in ["", "Gi", "1.2.3", "1Q", "1e", "1e+x", "abc", ".", "12Mi5"] {
            assert_eq!(value(&q(text)), None, "{text:?}");
        }
        assert_eq!(value(&q("100000Ei")), None, "does not fit an i64");
    }
}
