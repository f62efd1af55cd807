//! One running generation: its job, its KV cache, and what follows the model for each of its
//! tokens (sampling, detokenizing, stop strings, events). The scheduler (`scheduler.rs`) puts
//! its next tokens into a batch and hands it its logits.

use super::logprobs::TokenLogprobs;
use super::piece;
use super::session::CachedSequence;
use super::{Event, FinishReason, Job, StopMatcher, StopOutcome, Usage};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::sampler::Sampler;
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Where a sequence is.
enum Phase {
    /// Prompt tokens `next..` are still to run; the next step runs `next..next + piece`
    /// ([`Sequence::plan`]).
    Prefill { next: usize, piece: usize },
    /// The last sampled token is to run.
    Decode { token: [u32; 1] },
}

pub(super) struct Sequence {
    pub(super) job: Job,
    /// Its cache and the tokens the cache holds.
    pub(super) seq: CachedSequence,
    phase: Phase,
    sampler: Sampler,
    decoder: StreamDecoder,
    stop: StopMatcher,
    n_gen: usize,
    /// Prompt tokens whose keys and values were already in the cache.
    cached: usize,
}

impl Sequence {
    /// Starts `job` on `seq`, keeping its first `common` positions (a prefix of the prompt,
    /// short of its last token: `engine/prefix.rs`).
    pub(super) fn start(job: Job, mut seq: CachedSequence, sampler: Sampler, n_ctx: usize, common: usize) -> Sequence {
        debug_assert!(common < job.prompt.len() && seq.tokens[..common] == job.prompt[..common]);
        seq.truncate(common);
        // Room for the whole context, so appending a token never reallocates.
        seq.tokens.reserve(n_ctx.saturating_sub(seq.tokens.len()));
        seq.classes.reserve(n_ctx.saturating_sub(seq.classes.len()));
        let stop = StopMatcher::new(&job.params.stop);
        Sequence {
            job,
            seq,
            phase: Phase::Prefill { next: common, piece: 0 },
            sampler,
            // Control tokens render as nothing, as in llama.cpp's default detokenization.
            decoder: StreamDecoder::new(true),
            stop,
            n_gen: 0,
            cached: common,
        }
    }

    pub(super) fn is_prefilling(&self) -> bool {
        matches!(self.phase, Phase::Prefill { .. })
    }

    /// The prompt tokens this sequence computes: those it did not take from a cache.
    fn run(&self) -> std::ops::Range<usize> {
        self.cached..self.job.prompt.len()
    }

    /// Plans this sequence's part of the next step and returns its prompt tokens (0 when it
    /// decodes): the rest of its prompt chunk, or where `room` (the step's prompt tokens left)
    /// is shorter, a piece of it that gives the same bits (`piece.rs`), possibly longer than
    /// `room` if no piece within it does.
    pub(super) fn plan(&mut self, n_batch: usize, room: usize, model: &dyn Model) -> usize {
        let Phase::Prefill { next, .. } = self.phase else { return 0 };
        let n = piece::piece_len(&|t, n| model.chunk_class(t, n), self.run(), n_batch, next, room);
        self.phase = Phase::Prefill { next, piece: n };
        n
    }

    /// Tokens of the prompt chunk the next prompt tokens belong to (0 when decoding).
    pub(super) fn chunk_len(&self, n_batch: usize) -> usize {
        match self.phase {
            Phase::Prefill { next, .. } => piece::chunk_of(self.run(), n_batch, next).len(),
            Phase::Decode { .. } => 0,
        }
    }

    /// The tokens this sequence runs in the next step (the prompt piece of [`Self::plan`], or
    /// its last sampled token), its cache, and whether that step gives it logits.
    pub(super) fn next(&mut self) -> (&[u32], &mut KvCache, bool) {
        match &self.phase {
            Phase::Prefill { next, piece } => {
                let (prompt, end) = (&self.job.prompt, next + piece);
                debug_assert!(*piece > 0, "a prompt piece is planned before it runs");
                (&prompt[*next..end], &mut self.seq.cache, end == prompt.len())
            }
            Phase::Decode { token } => (&token[..], &mut self.seq.cache, true),
        }
    }

    /// Records that the tokens of [`Self::next`] ran (the cache advanced past them), with
    /// the chunk classes `model` gave them; returns how many of them were prompt tokens.
    pub(super) fn ran(&mut self, model: &dyn Model) -> usize {
        match &mut self.phase {
            Phase::Prefill { next, piece } => {
                let n = *piece;
                self.seq.tokens.extend_from_slice(&self.job.prompt[*next..*next + n]);
                self.seq.classes.extend((0..n).map(|t| model.chunk_class(t, n)));
                (*next, *piece) = (*next + n, 0);
                n
            }
            Phase::Decode { token } => {
                self.seq.tokens.push(token[0]);
                self.seq.classes.push(model.chunk_class(0, 1));
                0
            }
        }
    }

    /// Tokens sampled so far.
    pub(super) fn n_gen(&self) -> usize {
        self.n_gen
    }

    /// Samples from `logits` (the last token's), sends the token's event, and says whether
    /// the generation ends here. `piece` is a reused buffer.
    pub(super) fn sample(
        &mut self,
        logits: &[f32],
        tokenizer: &Tokenizer,
        piece: &mut String,
        n_ctx: usize,
    ) -> Result<Option<FinishReason>> {
        if self.job.cancel.is_cancelled() {
            return Ok(Some(FinishReason::Cancelled));
        }
        if self.n_gen >= self.job.params.max_tokens {
            return Ok(Some(FinishReason::Length));
        }
        let id = self.sampler.sample(logits, &self.seq.tokens)?;
        self.n_gen += 1;
        if !self.job.params.ignore_eos && tokenizer.is_eog(id) {
            return Ok(Some(FinishReason::Stop));
        }
        // Per token, the event's text is the one allocation (none when it is empty).
        piece.clear();
        self.decoder.push_into(tokenizer, id, piece);
        let (text, stopped) = match self.stop.push(piece) {
            StopOutcome::Emit(t) => (t, false),
            StopOutcome::Stop(t) => (t, true),
        };
        let logprobs = self.job.params.logprobs.map(|n| Box::new(TokenLogprobs::of(logits, id, n)));
        if !self.job.sink.send(Event::Token { id, text, logprobs }) {
            return Ok(Some(FinishReason::Cancelled));
        }
        if stopped {
            return Ok(Some(FinishReason::Stop));
        }
        if self.seq.tokens.len() >= n_ctx {
            return Ok(Some(FinishReason::Length));
        }
        self.phase = Phase::Decode { token: [id] };
        Ok(None)
    }

    /// Ends the generation: releases held-back text (unless cancelled), puts the cache back in
    /// the job's session (or returns it), then sends `Done`.
    pub(super) fn finish(mut self, reason: FinishReason) -> Option<CachedSequence> {
        if reason != FinishReason::Cancelled {
            let mut rest = self.decoder.flush().unwrap_or_default();
            rest = match self.stop.push(&rest) {
                StopOutcome::Emit(t) => t + &self.stop.flush(),
                StopOutcome::Stop(t) => t,
            };
            if !rest.is_empty() {
                self.job.sink.send(Event::Text(rest));
            }
        }
        let usage =
            Usage { prompt_tokens: self.job.prompt.len(), completion_tokens: self.n_gen, cached_tokens: self.cached };
        // Before `Done`, so a caller's next turn finds the cache.
        let seq = match &self.job.session {
            Some(s) => {
                s.put(self.seq);
                None
            }
            None => Some(self.seq),
        };
        self.job.sink.send(Event::Done { finish_reason: reason, usage });
        seq
    }
}
