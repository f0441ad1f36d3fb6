//! Device patterns: `*` (any run of characters, also none) and `?` (exactly
//! one), as tokens' `devices` claims (PROTOCOL.md §4) and alert rules'
//! `devices` use them. One matcher, so a token's scope and a rule's reach
//! can never disagree on what a pattern means.

/// A `*`/`?` glob, matched over characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Box<[char]>);

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob(pattern.chars().collect())
    }

    /// `*` matches any run of characters (also none), `?` exactly one.
    pub fn matches(&self, text: &str) -> bool {
        let p = &self.0;
        let t: Vec<char> = text.chars().collect();
        let (mut pi, mut ti) = (0usize, 0usize);
        // Where the last `*` was and which text position it is trying to
        // absorb up to: the classic linear backtracking for one-star globs.
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(&c) if c == '?' || c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }

    /// The glob as a SQL `LIKE` pattern with `\` as escape character.
    pub fn to_like(&self) -> String {
        let mut out = String::with_capacity(self.0.len() + 4);
        for &c in self.0.iter() {
            match c {
                '*' => out.push('%'),
                '?' => out.push('_'),
                '%' | '_' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                c => out.push(c),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = Glob::new("truck-*");
        assert!(g.matches("truck-7"));
        assert!(g.matches("truck-"));
        assert!(!g.matches("van-1"));
        assert!(Glob::new("a?c").matches("abc"));
        assert!(!Glob::new("a?c").matches("ac"));
        assert!(Glob::new("*-7").matches("truck-7"));
        assert!(Glob::new("*a*b*").matches("xxaxxbxx"));
        assert!(!Glob::new("*a*b").matches("xxaxxbxx"));
        assert!(Glob::new("exact").matches("exact"));
        assert!(!Glob::new("exact").matches("exact1"));
        assert!(Glob::new("*").matches(""));
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(Glob::new("a_b*?").to_like(), "a\\_b%_");
    }
}
