//! Text that looks like what people type into a forum: words from several scripts,
//! quotes, apostrophes, emoji, newlines, quoted replies and code blocks.

use rand::Rng;

const WORDS: &[&str] = &[
    "the",
    "a",
    "to",
    "and",
    "of",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "this",
    "we",
    "you",
    "but",
    "not",
    "be",
    "are",
    "have",
    "was",
    "can",
    "if",
    "or",
    "as",
    "at",
    "so",
    "from",
    "just",
    "what",
    "about",
    "when",
    "there",
    "would",
    "should",
    "could",
    "think",
    "know",
    "need",
    "release",
    "build",
    "deploy",
    "server",
    "database",
    "query",
    "index",
    "migration",
    "backup",
    "schema",
    "column",
    "table",
    "replica",
    "cache",
    "latency",
    "timeout",
    "config",
    "feature",
    "bug",
    "fix",
    "patch",
    "update",
    "issue",
    "ticket",
    "review",
    "merge",
    "branch",
    "commit",
    "test",
    "staging",
    "production",
    "customer",
    "team",
    "meeting",
    "weekend",
    "coffee",
    "lunch",
    "idea",
    "plan",
    "roadmap",
    "sprint",
    "design",
    "mockup",
    "feedback",
    "question",
    "answer",
    "thanks",
    "please",
    "maybe",
    "really",
    "actually",
    "probably",
    "definitely",
    "tomorrow",
    "yesterday",
    "today",
    "morning",
    "evening",
    "week",
    "month",
    "quarter",
    "year",
    "report",
    "dashboard",
    "metrics",
    "alert",
    "pager",
    "incident",
    "postmortem",
    "rollback",
    "hotfix",
    "invoice",
    "billing",
    "account",
    "password",
    "login",
    "session",
    "token",
    "email",
    "upload",
    "download",
    "file",
    "image",
    "video",
    "link",
    "page",
    "wiki",
    "forum",
    "thread",
    "reply",
    "slow",
    "fast",
    "broken",
    "working",
    "weird",
    "great",
    "terrible",
    "simple",
    "complex",
    "small",
    "large",
    "old",
    "new",
    "first",
    "last",
    "next",
    "other",
    "same",
    "different",
    "café",
    "naïve",
    "résumé",
    "über",
    "Straße",
    "Größe",
    "déjà",
    "vu",
    "señor",
    "año",
    "piñata",
    "données",
    "façade",
    "coöperate",
    "smörgåsbord",
    "Ångström",
    "fjörður",
    "mañana",
    "привет",
    "данные",
    "сервер",
    "ошибка",
    "спасибо",
    "γεια",
    "δεδομένα",
    "שלום",
    "مرحبا",
    "データ",
    "サーバー",
    "ありがとう",
    "数据库",
    "服务器",
    "谢谢",
    "데이터",
    "감사합니다",
    "नमस्ते",
    "ধন্যবাদ",
    "ขอบคุณ",
    "xin",
    "chào",
    "cảm",
    "ơn",
    "teşekkürler",
    "dziękuję",
];

const STARTERS: &[&str] = &[
    "I",
    "We",
    "The",
    "This",
    "Honestly,",
    "So",
    "Also,",
    "Hmm,",
    "OK",
    "Thanks,",
    "Yes,",
    "No,",
    "Maybe",
    "Has",
    "Does",
    "Could",
    "Après",
    "Ça",
    "Übrigens",
    "Pues",
    "Kind of",
    "FWIW",
    "IMHO",
    "TL;DR:",
    "Update:",
    "Edit:",
    "PS:",
    "Quick question:",
    "Heads up:",
];

const EMOJI: &[&str] = &[
    "😀",
    "😂",
    "🙏",
    "👍",
    "👎",
    "🎉",
    "🔥",
    "🚀",
    "🤔",
    "😅",
    "❤️",
    "✅",
    "❌",
    "⚠️",
    "💡",
    "🐛",
    "🍕",
    "☕",
    "🙈",
    "👀",
    "💯",
    "🤷‍♀️",
    "👩‍💻",
    "🇫🇷",
    "🏳️‍🌈",
];

const ENDINGS: &[&str] = &[
    ".", ".", ".", ".", "!", "?", "...", "?!", " :)", " :-(", " ;)",
];

const CODE: &[&str] = &[
    "SELECT * FROM posts WHERE topic_id = ? ORDER BY created_at DESC LIMIT 20;",
    "let user = db.find_user(id)?;",
    "if (err) { console.error(\"failed:\", err); return; }",
    "$ curl -sS 'https://example.com/api/v1/topics?page=2' | jq '.items[0]'",
    "UPDATE users SET last_seen = strftime('%s','now') WHERE id = 42;",
    "path = \"C:\\\\Users\\\\admin\\\\backup.db\"",
    "for i in range(10):\n    print(f\"row {i}: {rows[i]!r}\")",
    "ERROR:  duplicate key value violates unique constraint \"users_email_key\"",
];

/// One word, occasionally decorated the way people type.
fn word<R: Rng>(rng: &mut R, out: &mut String) {
    let w = WORDS[rng.random_range(0..WORDS.len())];
    match rng.random_range(0..100u32) {
        0..=2 => {
            out.push('"');
            out.push_str(w);
            out.push('"');
        }
        3 => {
            out.push('\'');
            out.push_str(w);
            out.push('\'');
        }
        4 => {
            out.push_str(w);
            out.push_str("'s");
        }
        5 => {
            out.push('`');
            out.push_str(w);
            out.push('`');
        }
        6 => {
            out.push('*');
            out.push_str(w);
            out.push('*');
        }
        7 => {
            out.push_str(w);
            out.push(',');
        }
        _ => out.push_str(w),
    }
}

/// One sentence of `min..=max` words.
pub(crate) fn sentence<R: Rng>(rng: &mut R, out: &mut String, min: usize, max: usize) {
    out.push_str(STARTERS[rng.random_range(0..STARTERS.len())]);
    let n = rng.random_range(min..=max);
    for _ in 0..n {
        out.push(' ');
        word(rng, out);
    }
    out.push_str(ENDINGS[rng.random_range(0..ENDINGS.len())]);
    if rng.random_ratio(1, 10) {
        out.push(' ');
        out.push_str(EMOJI[rng.random_range(0..EMOJI.len())]);
    }
}

/// A short title: a few words, no final punctuation.
pub(crate) fn title<R: Rng>(rng: &mut R, out: &mut String) {
    out.clear();
    out.push_str(STARTERS[rng.random_range(0..STARTERS.len())]);
    for _ in 0..rng.random_range(2..=9) {
        out.push(' ');
        out.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    if rng.random_ratio(1, 6) {
        out.push('?');
    }
    if rng.random_ratio(1, 25) {
        out.push(' ');
        out.push_str(EMOJI[rng.random_range(0..EMOJI.len())]);
    }
}

/// A forum post: most are a paragraph or two, a few are long; some quote an earlier
/// post (`> ...`), some carry a code block.
pub(crate) fn post<R: Rng>(rng: &mut R, out: &mut String) {
    out.clear();
    if rng.random_ratio(3, 20) {
        out.push_str("> ");
        sentence(rng, out, 4, 16);
        out.push_str("\n\n");
    }
    // Paragraph count: geometric-ish with a long tail (1 most often, up to 14).
    let mut paragraphs = 1;
    while paragraphs < 14 && rng.random_ratio(9, 20) {
        paragraphs += 1;
    }
    for p in 0..paragraphs {
        if p > 0 {
            out.push_str("\n\n");
        }
        for s in 0..rng.random_range(1..=3) {
            if s > 0 {
                out.push(' ');
            }
            sentence(rng, out, 3, 18);
        }
    }
    if rng.random_ratio(1, 20) {
        out.push_str("\n\n```\n");
        out.push_str(CODE[rng.random_range(0..CODE.len())]);
        out.push_str("\n```");
    }
    if rng.random_ratio(1, 12) {
        out.push_str("\r\n-- \r\nsent from my phone");
    }
}

/// A wiki page in Markdown: headings, lists and several paragraphs.
pub(crate) fn wiki<R: Rng>(rng: &mut R, heading: &str, out: &mut String) {
    out.clear();
    out.push_str("# ");
    out.push_str(heading);
    out.push_str("\n\n");
    for section in 0..rng.random_range(2..=7) {
        if section > 0 {
            out.push_str("\n\n## ");
            sentence(rng, out, 1, 4);
            out.push_str("\n\n");
        }
        for _ in 0..rng.random_range(1..=3) {
            sentence(rng, out, 5, 20);
            out.push(' ');
            sentence(rng, out, 5, 20);
            out.push_str("\n\n");
        }
        if rng.random_ratio(1, 2) {
            for _ in 0..rng.random_range(2..=6) {
                out.push_str("- ");
                sentence(rng, out, 2, 8);
                out.push('\n');
            }
        }
    }
}

/// A display name from several scripts; a few carry an emoji.
pub(crate) fn display_name<R: Rng>(rng: &mut R, out: &mut String) {
    const FIRST: &[&str] = &[
        "Ana",
        "José",
        "Zoë",
        "Björn",
        "Chloé",
        "Łukasz",
        "Søren",
        "Ngọc Anh",
        "Aiko",
        "李",
        "王",
        "Анна",
        "Дмитрий",
        "Σοφία",
        "محمد",
        "Noa",
        "Priya",
        "Oluwaseun",
        "Sam",
        "Alex",
        "Maria",
        "Jürgen",
        "François",
        "İlkay",
        "Ewa",
        "Kwame",
        "Mei",
        "Hana",
        "Ólafur",
        "Renée",
    ];
    const LAST: &[&str] = &[
        "García",
        "Müller",
        "Nguyễn",
        "O'Brien",
        "Smith",
        "雷",
        "明",
        "Петрова",
        "Иванов",
        "Παπαδοπούλου",
        "العلي",
        "Cohen",
        "Patel",
        "Adeyemi",
        "Jones",
        "Kowalski",
        "Dubois",
        "Yılmaz",
        "Núñez",
        "Sørensen",
        "Tanaka",
        "田中",
        "Kim",
        "김",
        "van der Berg",
        "D'Angelo",
    ];
    out.clear();
    out.push_str(FIRST[rng.random_range(0..FIRST.len())]);
    out.push(' ');
    out.push_str(LAST[rng.random_range(0..LAST.len())]);
    if rng.random_ratio(1, 30) {
        out.push(' ');
        out.push_str(EMOJI[rng.random_range(0..EMOJI.len())]);
    }
}

/// A lowercase slug-safe word.
pub(crate) fn slug_word<R: Rng>(rng: &mut R) -> &'static str {
    const SLUG: &[&str] = &[
        "onboarding",
        "runbook",
        "release",
        "oncall",
        "deploy",
        "backup",
        "style",
        "guide",
        "faq",
        "setup",
        "api",
        "billing",
        "security",
        "roadmap",
        "meeting",
        "notes",
        "howto",
        "database",
        "cache",
        "search",
        "mobile",
        "design",
        "hiring",
        "policy",
        "travel",
    ];
    SLUG[rng.random_range(0..SLUG.len())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn post_bodies_carry_unicode_emoji_newlines_and_quotes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut all = String::new();
        let mut buf = String::new();
        for _ in 0..2000 {
            post(&mut rng, &mut buf);
            all.push_str(&buf);
        }
        assert!(all.contains('\n'));
        assert!(all.contains('"'));
        assert!(all.contains('\''));
        assert!(all.contains("> "));
        assert!(all.contains("🚀"));
        assert!(all.contains("データ"));
        assert!(all.contains("\r\n"));
    }
}
